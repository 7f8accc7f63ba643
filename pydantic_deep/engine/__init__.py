"""The Docker engine: the client, containers as the engine sees them, volumes, and the one adapter
that touches docker-py's internals."""
