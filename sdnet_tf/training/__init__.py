"""Training: the schedule (backend-agnostic) and the engines (gradient mechanics)."""
