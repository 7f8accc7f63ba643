"""The notebook widgets at their documented address (``from pydantic_deep.widgets import dashboard``);
they live in :mod:`pydantic_deep.notebook.widgets`."""

from .notebook.widgets import RuntimePicker, SessionMonitor, UploadPanel, current_magics, dashboard

__all__ = ["RuntimePicker", "SessionMonitor", "UploadPanel", "current_magics", "dashboard"]
