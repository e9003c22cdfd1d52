"""The experiment manager: tracked jobs, the pipeline orchestrator, the worker entry point, monitoring."""
