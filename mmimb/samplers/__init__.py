"""mmimb.samplers."""
