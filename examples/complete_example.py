"""The guide's "Complete Example" (docs/docker-runtimes.md), runnable as it stands.

With a real model: set PYDANTIC_DEEP_MODEL (e.g. openai:gpt-4o) and the provider's API key
(OPENAI_API_KEY), then `python examples/complete_example.py`. Without a key, PYDANTIC_DEEP_MODEL=test
runs it offline with Pydantic AI's TestModel. The three users' CSV files are made here when missing.
shutdown() keeps the users' files for their next session; `await manager.release(user_id)` removes
them.
"""

import asyncio
from pathlib import Path

from pydantic_deep import (
    DeepAgentDeps,
    RuntimeConfig,
    SessionManager,
    create_deep_agent,
)

SAMPLE = "month,sales\njan,{a}\nfeb,{b}\nmar,{c}\n"


async def main():
    # Custom runtime for data analysis
    runtime = RuntimeConfig(
        name="analysis-env",
        description="Data analysis environment",
        base_image="python:3.12-slim",
        packages=["pandas", "numpy", "matplotlib", "seaborn"],
    )

    # Session manager for multiple users
    manager = SessionManager(
        default_runtime=runtime,
        default_idle_timeout=1800,  # 30 minutes
    )

    try:
        # Simulate multiple users
        for user_id in ["alice", "bob", "charlie"]:
            sandbox = await manager.get_or_create(user_id)
            deps = DeepAgentDeps(backend=sandbox)

            # Upload user-specific data
            with open(f"{user_id}_data.csv", "rb") as f:
                deps.upload_file("data.csv", f.read())

            agent = create_deep_agent()
            result = await agent.run(
                "Analyze /uploads/data.csv and create a summary",
                deps=deps,
            )
            print(f"{user_id}: {result.output[:100]}...")

        # Check active sessions
        print(f"Active sessions: {manager.session_count}")

    finally:
        # Clean up all sessions
        count = await manager.shutdown()
        print(f"Cleaned up {count} sessions")


if __name__ == "__main__":
    for number, user in enumerate(["alice", "bob", "charlie"], start=1):
        path = Path(f"{user}_data.csv")
        if not path.exists():
            path.write_text(SAMPLE.format(a=10 * number, b=12 * number, c=9 * number))
    asyncio.run(main())
