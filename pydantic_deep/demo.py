"""The main demo: a python-datascience sandbox analyses a CSV with pandas, inside the container."""

from __future__ import annotations

import time
from importlib.resources import as_file, files

from .sandbox.docker import DockerSandbox

ANALYSIS = """\
import pandas as pd
df = pd.read_csv("/uploads/sales.csv")
df["revenue"] = df["units"] * df["price"]
summary = df.groupby("region")[["units", "revenue"]].sum().sort_values("revenue", ascending=False)
print(summary.to_string())
print(f"\\nTotal revenue: {df['revenue'].sum():.2f} from {len(df)} rows (pandas {pd.__version__})")
"""


def run_demo() -> str:
    """Start a python-datascience sandbox, upload a CSV, run pandas on it and return the output."""
    started = time.monotonic()
    with DockerSandbox(runtime="python-datascience", progress=lambda line: print(f"  | {line}")) as sandbox:
        print(f"Started {sandbox!r} in {time.monotonic() - started:.1f} s")
        with as_file(files("pydantic_deep") / "demo_data" / "sales.csv") as csv_path:
            print(f"Uploaded {sandbox.upload(csv_path)}")
        sandbox.write_file("analysis.py", ANALYSIS)
        result = sandbox.execute("python analysis.py")
    if not result.ok:
        raise SystemExit(f"The analysis failed (exit code {result.exit_code}):\n{result.output}")
    return result.output
