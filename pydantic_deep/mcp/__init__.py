"""``pydantic-deep mcp``: the sandbox tools served over the Model Context Protocol."""
