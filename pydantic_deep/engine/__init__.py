"""The Docker engine: the client (client.py), containers as the engine sees them (containers.py),
volumes (volumes.py), the label keys on everything pydantic_deep makes (labels.py), and the one
adapter that touches docker-py's internals (api.py)."""
