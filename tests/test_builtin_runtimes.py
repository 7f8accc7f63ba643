"""All five built-in runtimes build here and have what their descriptions promise."""

from __future__ import annotations

import json

import pytest

from pydantic_deep import DockerSandbox

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("runtime", "command", "expected"),
    [
        ("python-minimal", "python -c 'import sys; print(sys.version_info.major)'", "3\n"),
        ("python-datascience",
         "python -c 'import pandas, numpy, matplotlib, sklearn, seaborn; print(\"ok\")'", "ok\n"),
        ("python-web", "python -c 'import fastapi, sqlalchemy, httpx, uvicorn; print(\"ok\")'", "ok\n"),
        ("node-minimal", "node -e 'console.log(process.versions.node.split(\".\")[0])'", "20\n"),
    ],
)
def test_runtime_has_its_packages(runtime: str, command: str, expected: str) -> None:
    with DockerSandbox(runtime) as sandbox:
        result = sandbox.execute(command, timeout=120)
    assert result.output == expected, result.output


def test_datascience_runs_pandas_and_saves_a_plot() -> None:
    script = (
        "import pandas as pd, seaborn as sns, matplotlib.pyplot as plt\n"
        "df = pd.read_csv('/uploads/data.csv')\n"
        "sns.barplot(data=df, x='k', y='v'); plt.savefig('plot.png')\n"
        "print(df['v'].sum())\n"
    )
    with DockerSandbox("python-datascience") as sandbox:
        sandbox.write_file("/uploads/data.csv", "k,v\na,1\nb,2\n")
        sandbox.write_file("plot.py", script)
        result = sandbox.execute("python plot.py", timeout=120)
        assert result.output.strip().splitlines()[-1] == "3", result.output
        assert sandbox.read_file("plot.png").startswith(b"\x89PNG")


def test_node_react_type_checks_and_builds_a_page() -> None:
    files = {
        "app/index.html": '<div id="root"></div><script type="module" src="/src/main.tsx"></script>',
        "app/src/main.tsx": (
            'import { createRoot } from "react-dom/client";\n'
            "function Hello({ name }: { name: string }) { return <h1>Hello {name}</h1>; }\n"
            'createRoot(document.getElementById("root")!).render(<Hello name="sandbox" />);\n'
        ),
        "app/tsconfig.json": json.dumps({"compilerOptions": {
            "jsx": "react-jsx", "strict": True, "module": "ESNext", "moduleResolution": "bundler",
            "target": "ES2020", "lib": ["DOM", "ES2020"], "noEmit": True, "skipLibCheck": True}}),
    }
    with DockerSandbox("node-react") as sandbox:
        for path, content in files.items():
            sandbox.write_file(path, content)
        checked = sandbox.execute("cd app && tsc -p . && echo typed", timeout=120)
        assert checked.output == "typed\n", checked.output
        built = sandbox.execute("cd app && vite build --logLevel error && ls dist", timeout=180)
        assert built.exit_code == 0 and "index.html" in built.output, built.output
        bundle = sandbox.execute("cat app/dist/assets/*.js").output
        assert "Hello" in bundle and "sandbox" in bundle
