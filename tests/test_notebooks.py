"""The notebooks in ``notebooks/``: committed executed, public API only, and they still run.

* Static checks (cheap): every notebook is stored with the outputs of a full run (every code
  cell executed in order, with output, no errors, plots embedded as PNG), and imports nothing
  private (``neuralode._...``).
* Execution: every notebook runs top to bottom in a fresh kernel of *this* Python (the venv's),
  with the notebooks folder as working directory and ``NEURALODE_NOTEBOOK_SMOKE=1``, which
  makes the notebooks shrink their iteration counts and sizes (every cell still runs). The
  smoke runs are compile-bound, so XLA's backend optimisation level is turned down for them.

To refresh the committed outputs after editing a notebook, execute it in full mode (without
``NEURALODE_NOTEBOOK_SMOKE``) and save it in place; `make notebooks` does it for all of them.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = [
    "01_quickstart",
    "02_gradients",
    "03_cnf_two_moons",
    "04_latent_ode_spirals",
    "05_odenet_mnist",
    "06_events",
]
SMOKE_VAR = "NEURALODE_NOTEBOOK_SMOKE"
CELL_TIMEOUT_S = 300

PRIVATE = re.compile(
    r"\bneuralode(\.\w+)*\._(?!_)\w*"  # neuralode._odeint, neuralode.nn._cnf
    r"|\bfrom\s+neuralode(\.\w+)*\s+import\s+\(?[^\n]*\b_(?!_)\w*"  # from neuralode import _x
    r"|\bnde(\.\w+)*\._(?!_)\w*"  # nde._odeint, nde.nn._latent (dunders are fine)
)


def _path(name: str) -> pathlib.Path:
    return NOTEBOOK_DIR / f"{name}.ipynb"


def _load(name: str) -> dict:
    return json.loads(_path(name).read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


# ---------------------------------------------------------------------------------------------
# Static checks
# ---------------------------------------------------------------------------------------------


def test_expected_notebooks_present():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_with_outputs(name):
    """Stored outputs of one in-order run: a stale or unexecuted notebook fails here."""
    nb = _load(name)
    cells = _code_cells(nb)
    assert cells, "no code cells"
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"execution counts {counts}: execute the whole notebook once, top to bottom, and save"
    )
    images = 0
    for i, cell in enumerate(cells):
        outputs = cell["outputs"]
        assert outputs, f"code cell {i} has no stored output"
        for out in outputs:
            assert out["output_type"] != "error", f"code cell {i} stored an error: {out}"
            if out["output_type"] == "stream":
                assert out["name"] == "stdout", f"code cell {i} wrote to stderr: {out['text']}"
            images += "image/png" in out.get("data", {})
    assert images >= 1, "no embedded PNG plot"
    assert SMOKE_VAR in _source(cells[0]), f"the first code cell must read ${SMOKE_VAR}"
    assert "smoke mode" not in json.dumps([c["outputs"] for c in cells]), (
        "the stored outputs come from a smoke run; store a full run"
    )


@pytest.mark.parametrize("name", EXPECTED)
def test_public_api_only(name):
    for i, cell in enumerate(_code_cells(_load(name))):
        match = PRIVATE.search(_source(cell))
        assert match is None, f"code cell {i} uses a private name: {match.group(0)!r}"


@pytest.mark.parametrize("name", EXPECTED)
def test_imports_only_neuralode_and_third_party(name):
    """No code of the repository's other folders (experiments, benchmarks, examples, tests)
    and no import path changes: a notebook runs wherever neuralode is installed."""
    import ast

    local = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "neuralode"}
    for i, cell in enumerate(_code_cells(_load(name))):
        source = _source(cell)
        assert "sys.path" not in source and "importlib" not in source, f"code cell {i}"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in local, f"code cell {i} imports {module}"


def test_private_pattern():
    for bad in ["import neuralode._odeint", "from neuralode._adjoint import x",
                "from neuralode.nn import _MLPField", "nde._solvers.RK4()", "nde.nn._latent"]:
        assert PRIVATE.search(bad), bad
    for good in ["import neuralode as nde", "from neuralode import nn", "nde.odeint(f, y0, ts)",
                 "nde.nn.LatentODE", "nde.training.make_train_step", "sol.stats['nfe']",
                 "nde.__version__"]:
        assert PRIVATE.search(good) is None, good


# ---------------------------------------------------------------------------------------------
# Execution (smoke mode)
# ---------------------------------------------------------------------------------------------


def _kernel_spec_manager(directory: pathlib.Path):
    """A kernelspec that starts ``sys.executable``, so the kernel is this venv's Python
    whatever kernelspecs the user or the system has installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = directory / "kernels" / "neuralode-test"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "neuralode test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env[SMOKE_VAR] = "1"
    env.pop("JAX_ENABLE_X64", None)  # the notebooks choose their own precision
    # Compile-bound smoke runs: a lower XLA:CPU optimisation level compiles several times
    # faster; the smoke run only checks that every cell runs.
    flags = env.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        env["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
    return env


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory):
    return _kernel_spec_manager(tmp_path_factory.mktemp("jupyter"))


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(kernel_spec_manager, name):
    """Execute the notebook in smoke mode; any cell error fails the test."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(_path(name), as_version=4)
    km = KernelManager(kernel_name="neuralode-test", kernel_spec_manager=kernel_spec_manager)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    try:
        client.execute(env=_kernel_env(), cleanup_kc=True)  # cleanup_kc: shut the kernel down
    except CellExecutionError as err:
        pytest.fail(f"{name}.ipynb failed in smoke mode:\n{err}", pytrace=False)
    print(f"{name}: {time.perf_counter() - start:.1f} s (smoke)")
