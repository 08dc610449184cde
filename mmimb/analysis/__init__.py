"""mmimb.analysis."""
