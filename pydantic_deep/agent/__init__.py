"""The Pydantic AI agent: its dependencies, the sandbox toolset and the system prompt."""
