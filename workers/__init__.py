"""The worker service: runs provider and job tasks in containers on one machine."""
