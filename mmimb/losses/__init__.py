"""mmimb.losses."""
