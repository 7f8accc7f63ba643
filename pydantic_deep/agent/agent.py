"""create_deep_agent: a Pydantic AI agent whose tools act inside the run's sandbox."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings
from pydantic_ai.toolsets import AbstractToolset

from .deps import DeepAgentDeps
from .tools import sandbox_toolset

__all__ = ["MODEL_ENV_VAR", "create_deep_agent"]

MODEL_ENV_VAR = "PYDANTIC_DEEP_MODEL"
"""Names the model when ``create_deep_agent`` gets none, e.g. ``openai:gpt-4o`` or
``anthropic:claude-sonnet-4-5`` (Pydantic AI's model names; the provider's API key as usual)."""


class _NoModel(Model):
    """Stands in when no model was named: the agent builds, and its first run says how to name one."""

    @property
    def model_name(self) -> str:
        return "no-model"

    @property
    def system(self) -> str:
        return "none"

    async def request(self, messages: list[ModelMessage], model_settings: ModelSettings | None,
                      model_request_parameters: ModelRequestParameters) -> ModelResponse:
        raise UserError(
            f"No model for the deep agent: pass create_deep_agent(model=...) or set {MODEL_ENV_VAR} "
            f"(for example {MODEL_ENV_VAR}=openai:gpt-4o, with OPENAI_API_KEY set)"
        )


def create_deep_agent(
    model: Model | str | None = None,
    *,
    instructions: str | None = None,
    toolsets: Sequence[AbstractToolset[DeepAgentDeps]] = (),
    **agent_options: Any,
) -> Agent[DeepAgentDeps, str]:
    """A Pydantic AI agent that works inside the sandbox of each run's :class:`DeepAgentDeps`.

    Its tools run commands and list, read, write, edit, glob and grep files in ``deps.backend``,
    looked up when a tool runs, so one agent serves every user's sandbox. Its instructions come
    with the toolset (:func:`~pydantic_deep.agent.tools.sandbox_toolset`): how to work in the
    sandbox, the runtime (name, description, work dir, network, pre-installed packages) and the
    files uploaded with ``deps.upload_file``.

    A tool failure the model can act on (a missing file, a bad path...) goes back to it; a failure
    of the machinery (``DockerUnavailableError``, ``ContainerGoneError``, an image that cannot be
    built...) ends the run with that error.

    Nothing reaches the network here: a model named by string is resolved on the first run.

    Args:
        model: A Pydantic AI model or model name; default ``$PYDANTIC_DEEP_MODEL``. With neither,
            the agent is built and its first run raises ``UserError`` saying how to name one.
        instructions: Extra instructions for the model, given before the toolset's (the
            sandbox's) instructions.
        toolsets: More toolsets for the agent, beside the sandbox tools.
        **agent_options: Passed to :class:`pydantic_ai.Agent` (``retries``, ``model_settings``, ...).
    """
    chosen: Model | str = model or os.environ.get(MODEL_ENV_VAR) or _NoModel()
    return Agent(
        chosen,
        deps_type=DeepAgentDeps,
        instructions=instructions,
        toolsets=[sandbox_toolset(), *toolsets],
        defer_model_check=True,
        **agent_options,
    )
