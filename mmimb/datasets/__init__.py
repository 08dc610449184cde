"""mmimb.datasets."""
