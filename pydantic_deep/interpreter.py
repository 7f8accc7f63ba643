"""The in-container interpreter at its documented address; it lives in
:mod:`pydantic_deep.notebook.interpreter`."""

from .notebook.interpreter import CellResult, SandboxInterpreter

__all__ = ["CellResult", "SandboxInterpreter"]
