"""Benchmarks of dstack against the real services (RabbitMQ, Docker); see bench/README.md."""
