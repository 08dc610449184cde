"""mmimb.evaluation."""
