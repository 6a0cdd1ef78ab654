"""The scheduler service: the single owner of run and job state."""
