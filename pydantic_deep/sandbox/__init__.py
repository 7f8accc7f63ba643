"""Sandboxes: the contract every backend honours, the Docker and local backends, the pool, and the
backend chosen by ``$PYDANTIC_DEEP_BACKEND``."""
