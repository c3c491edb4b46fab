"""The documentation site (``mkdocs.yml``, ``docs/``) cannot drift from the code.

* Every ```` ```python ```` block of every page in ``docs/`` runs: the blocks of one page run in
  order, in one fresh Python process (float32, CPU, like a reader's session), with a scratch
  folder as working directory. A failing block is reported with its page and line.
* Every public name (the ``__all__`` of ``neuralode``, ``neuralode.nn``,
  ``neuralode.datasets`` and ``neuralode.training``) has an entry (``::: path``) in the API
  reference (``docs/api/``) and a docstring, and every entry there is a public name.
* ``mkdocs build --strict`` passes: no broken link or anchor, no unresolved cross-reference,
  no docstring that fails to render.

The documentation packages come with the ``docs`` extra, which ``make test`` installs; without
them these tests fail (they are not skipped). ``python tests/test_docs.py docs/<page>.md``
runs the blocks of one page by hand.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = ("neuralode", "neuralode.nn", "neuralode.datasets", "neuralode.training")
# Hand-written pages whose code the test suite must find and run (a page that loses all its
# code blocks by accident fails here).
GUIDE_PAGES = (
    "index.md",
    "getting-started.md",
    "concepts.md",
    "gradients.md",
    "models.md",
    "training-guide.md",
    "training.md",
    "events-stiff.md",
    "architecture.md",
)
PAGE_TIMEOUT_S = 600

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


# ---------------------------------------------------------------------------------------------
# Code blocks
# ---------------------------------------------------------------------------------------------


def code_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """The ``python`` fenced blocks of a Markdown page: ``(first code line, code)``, in order.

    Fences may be indented (inside an admonition or a list); the code is dedented by the
    fence's indentation.
    """
    blocks: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        language = (m["info"].split() or [""])[0].strip("{}.").lower()
        start = i + 1
        i += 1
        body = []
        while i < len(lines):
            line = lines[i]
            if line.strip() == fence or (
                line.strip().startswith(fence) and not line.strip().strip(fence[0])
            ):
                break
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        if language in ("python", "py"):
            blocks.append((start + 1, "\n".join(body) + "\n"))
    return blocks


def pages_with_code() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if code_blocks(p))


# The child process: runs the blocks of one page in one namespace, each compiled with the page
# as its file name and its line numbers, so a traceback points into the Markdown source.
_RUNNER = r"""
import json, sys, time
page, blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for line, code in blocks:
    print(f"--- {page}:{line}", flush=True)
    start = time.perf_counter()
    exec(compile("\n" * (line - 1) + code, page, "exec"), namespace)
    print(f"--- {page}:{line} took {time.perf_counter() - start:.1f} s", flush=True)
"""


def child_env() -> dict[str, str]:
    """CPU, float32 (nothing inherited from the test session), this checkout first on the
    path; the runs are compile-bound, so XLA's backend optimisation is turned down."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    flags = env.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        env["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
    return env


def run_page(path: pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    rel = str(path.relative_to(ROOT))
    return subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps([rel, code_blocks(path)]),
        cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=PAGE_TIMEOUT_S,
        check=False,
    )


def test_guide_pages_have_code():
    with_code = {str(p.relative_to(DOCS)) for p in pages_with_code()}
    missing = [p for p in GUIDE_PAGES if p not in with_code]
    assert not missing, f"guide pages without a ```python block (no code of theirs runs): {missing}"


def test_block_extraction():
    page = DOCS / "getting-started.md"
    blocks = code_blocks(page)
    lines = page.read_text(encoding="utf-8").splitlines()
    for line, code in blocks:
        assert lines[line - 2].lstrip().startswith("```python")
        assert lines[line - 1].strip() == code.splitlines()[0].strip()
    assert all("```" not in code for _, code in blocks)


@pytest.fixture(scope="module")
def page_runs(request, tmp_path_factory):
    """The selected pages' runs, started together on a pool of two worker processes (the
    runs are compile-bound and single-threaded for most of their time)."""
    pages = sorted({
        item.callspec.params["page"] for item in request.session.items
        if getattr(item, "originalname", None) == "test_page_code_blocks_run"
    })
    workers = max(1, min(2, os.cpu_count() or 1, len(pages)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        runs = {
            page: pool.submit(run_page, DOCS / page, tmp_path_factory.mktemp("page"))
            for page in pages
        }
        yield runs


@pytest.mark.parametrize("page", [str(p.relative_to(DOCS)) for p in pages_with_code()])
def test_page_code_blocks_run(page, page_runs):
    proc = page_runs[page].result()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"a code block of docs/{page} failed:\n{output[-6000:]}"


# ---------------------------------------------------------------------------------------------
# API reference
# ---------------------------------------------------------------------------------------------


def api_entries() -> dict[str, list[str]]:
    """Every ``::: identifier`` of the API pages, with the pages it is on."""
    entries: dict[str, list[str]] = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for m in re.finditer(r"^:::[ \t]+([\w.]+)", page.read_text(encoding="utf-8"), re.M):
            entries.setdefault(m[1], []).append(page.name)
    return entries


def public_names() -> dict[str, object]:
    """Public path -> object, for every name exported by a public module."""
    names = {}
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            names[obj.__name__ if isinstance(obj, types.ModuleType) else f"{mod_name}.{name}"] = obj
    return names


def test_public_modules_are_the_documented_ones():
    import pkgutil

    import neuralode

    subpackages = {m.name for m in pkgutil.iter_modules(neuralode.__path__)}
    public = {f"neuralode.{name}" for name in subpackages if not name.startswith("_")}
    assert public == set(PUBLIC_MODULES[1:]), "a new public module needs its API page"


def test_api_reference_lists_every_public_name_once():
    entries = api_entries()
    public = public_names()
    missing = sorted(set(public) - set(entries))
    assert not missing, f"public names without an entry (::: name) in docs/api/: {missing}"
    unknown = sorted(set(entries) - set(public) - set(PUBLIC_MODULES))
    assert not unknown, f"docs/api/ documents names that are not public: {unknown}"
    twice = {k: v for k, v in entries.items() if len(v) > 1}
    assert not twice, f"documented more than once: {twice}"


def test_every_public_name_has_a_docstring():
    import griffe  # what mkdocstrings renders the docstrings with (the docs extra)

    package = griffe.load("neuralode", search_paths=[str(ROOT)], resolve_aliases=True)
    undocumented = []
    for path in public_names():
        obj = package[path.removeprefix("neuralode.")] if path != "neuralode" else package
        if obj.is_alias:
            obj = obj.final_target
        if obj.docstring is None or not obj.docstring.value.strip():
            undocumented.append(path)
    assert not undocumented, f"public names without a docstring: {undocumented}"


# ---------------------------------------------------------------------------------------------
# The site
# ---------------------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output[-6000:]}"
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert not warnings, "\n".join(warnings)
    site = tmp_path / "site"
    for page in ("index.html", "api/neuralode/index.html", "notebooks/01_quickstart/index.html",
                 "benchmarks/index.html", "reproduction/index.html", "changelog/index.html"):
        assert (site / page).is_file(), page
    # every public name has its anchor on the rendered API pages
    html = "".join(p.read_text(encoding="utf-8") for p in (site / "api").rglob("*.html"))
    absent = [name for name in public_names() if f'id="{name}"' not in html]
    assert not absent, f"public names not rendered in the API reference: {absent}"


if __name__ == "__main__":  # python tests/test_docs.py docs/<page>.md [...]
    import tempfile

    for arg in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as scratch:
            result = run_page(pathlib.Path(arg).resolve(), pathlib.Path(scratch))
            print(result.stdout + result.stderr)
            print(f"{arg}: {'ok' if result.returncode == 0 else 'FAILED'}")
