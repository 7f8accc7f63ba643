"""Named volumes: where files live that must outlive a container."""

from __future__ import annotations

from docker.errors import NotFound

from .client import docker_client
from .labels import managed

__all__ = ["create_volume", "ensure_volume", "find_volumes", "remove_volume", "volume_labels"]

def ensure_volume(name: str) -> None:
    """Create the volume ``name`` (labelled as ours) unless it exists: the engine's create keeps
    an existing volume as it is, labels and files."""
    docker_client().volumes.create(name, labels=managed())


def create_volume(name: str, labels: dict[str, str] | None = None) -> None:
    """Create the volume ``name`` with ``labels``, replacing one of that name."""
    remove_volume(name)
    docker_client().volumes.create(name, labels=managed(labels))


def volume_labels(name: str) -> dict[str, str] | None:
    """The labels of the volume ``name``, or ``None`` when there is no such volume."""
    try:
        return docker_client().volumes.get(name).attrs.get("Labels") or {}
    except NotFound:
        return None


def find_volumes(labels: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every volume carrying all ``labels``: its name and all its labels."""
    filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
    return {volume.name: volume.attrs.get("Labels") or {} for volume in docker_client().volumes.list(filters=filters)}


def remove_volume(name: str) -> None:
    """Remove the volume ``name`` and its files; one that is already gone is fine."""
    try:
        docker_client().api.remove_volume(name, force=True)
    except NotFound:
        pass
