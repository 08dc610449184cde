"""mmimb.transforms."""
