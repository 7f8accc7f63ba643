"""Running commands and moving files through a container: the supervisor channel, the ``docker exec``
fallback, and the in-container file transfers."""
