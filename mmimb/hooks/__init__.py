"""mmimb.hooks."""
