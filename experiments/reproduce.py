"""Run the paper's experiments and assemble docs/reproduction.md from their summaries.

``python -m experiments.reproduce [--preset small] [--only spirals,mnist] [--out runs/reproduce]``
runs every experiment module of ``experiments/`` that defines ``main`` and a ``PAPER_TABLE``
(or writes a ``summary.json``), each as ``python -m experiments.<name> --preset P --out
<out>/<name>-<P>``, then writes ``docs/reproduction.md``: our numbers beside the paper's, the
plots (copied to ``docs/reproduction/<name>-<plot>.png``), the machine and each wall time.

``--from-existing`` runs nothing and only regenerates the markdown from existing run folders,
so each experiment can be run on its own and the report assembled afterwards. A summary is
looked for, per experiment, in ``--summary PATH`` arguments, ``<out>/<name>-<preset>/``,
``runs/<name>-<preset>/`` and finally any ``runs/**/summary.json`` whose ``experiment`` and
``preset`` match (the newest wins). The report always covers every experiment whose summary
is found, not only the ones run this time.

Summary format understood (``summary.json``, written by each experiment): ``experiment``,
``preset``, ``wall_time_s``, ``metrics`` and ``paper`` (nested dicts; leaves with the same
path are shown side by side), ``plots`` (paths relative to the run folder, or dicts with
``path`` and ``caption``) and optionally ``tables`` (a list of ``{"title", "columns",
"rows"}`` rendered verbatim), ``notes`` (list of strings), ``machine``, ``command``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

from experiments._common import read_json
from experiments._report import fmt, machine_info, md_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = ROOT / "experiments"
KNOWN = ["spirals", "mnist", "density_matching", "max_likelihood", "nfe_study"]
"""The paper's experiments, in the order the report lists them."""
TITLES = {
    "spirals": "Latent ODE on irregular spirals (Table 2, Figure 8)",
    "mnist": "ODE-Net on MNIST (Table 1, Figure 3)",
    "density_matching": "Density matching with CNFs (Figure 4)",
    "max_likelihood": "Maximum-likelihood CNFs (Figure 5)",
    "nfe_study": "Function evaluations and tolerance (Figure 3)",
}
_SKIP = {"__init__", "reproduce"}


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


def is_experiment(path: pathlib.Path) -> bool:
    """Whether a module defines ``main`` and a ``PAPER_TABLE`` (or writes a summary.json)."""
    try:
        source = path.read_text()
        tree = ast.parse(source)
    except (OSError, SyntaxError):
        return False
    has_main = any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)
    names = set()
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return has_main and ("PAPER_TABLE" in names or "summary.json" in source)


def discover() -> tuple[list[str], list[str]]:
    """``(found, missing)``: experiment modules present (known ones first), known ones absent."""
    present = {
        p.stem
        for p in EXPERIMENTS_DIR.glob("*.py")
        if p.stem not in _SKIP and not p.stem.startswith("_") and is_experiment(p)
    }
    found = [n for n in KNOWN if n in present] + sorted(present - set(KNOWN))
    missing = [n for n in KNOWN if n not in present]
    return found, missing


def find_summary(
    name: str, preset: str, out: pathlib.Path, explicit: list[pathlib.Path]
) -> pathlib.Path | None:
    """The summary.json of experiment ``name`` at ``preset`` (see the module docstring)."""

    def matches(path: pathlib.Path, strict_preset: bool = True) -> bool:
        s = read_json(path)
        if not isinstance(s, dict) or s.get("experiment", name) != name:
            return False
        return not strict_preset or s.get("preset", preset) == preset

    for path in explicit:
        path = path / "summary.json" if path.is_dir() else path
        if path.is_file() and matches(path, strict_preset=False):
            return path
    for folder in (out / f"{name}-{preset}", ROOT / "runs" / f"{name}-{preset}"):
        path = folder / "summary.json"
        if path.is_file() and matches(path):
            return path
    candidates = []
    runs = ROOT / "runs"
    if runs.is_dir():
        for path in runs.glob("**/summary.json"):
            if len(path.relative_to(runs).parts) > 4:
                continue
            s = read_json(path)
            if isinstance(s, dict) and s.get("experiment") == name and s.get("preset") == preset:
                candidates.append(path)
    if candidates:
        return max(candidates, key=lambda p: p.stat().st_mtime)
    return None


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def run_experiment(name: str, preset: str, folder: pathlib.Path, extra: list[str]) -> dict:
    """Run one experiment in a fresh interpreter; returns its status and wall time."""
    cmd = [
        sys.executable,
        "-m",
        f"experiments.{name}",
        "--preset",
        preset,
        "--out",
        str(folder),
        *extra,
    ]
    print(f"[reproduce] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    status = "ok" if proc.returncode == 0 else f"failed (exit code {proc.returncode})"
    print(f"[reproduce] {name}: {status} after {wall:.0f} s", flush=True)
    return {"status": status, "wall_time_s": wall}


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and short lists) to ``{"a.b.c": leaf}``."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix or "value"] = tree
    return out


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _plot_entries(summary: dict) -> list[tuple[str, str]]:
    captions = summary.get("plot_captions")
    captions = captions if isinstance(captions, dict) else {}
    entries = []
    for item in summary.get("plots", []) or []:
        if isinstance(item, dict):
            path = item.get("path") or item.get("file")
            caption = item.get("caption") or item.get("title") or ""
        else:
            path, caption = item, captions.get(item, "")
        if path:
            entries.append((str(path), str(caption)))
    return entries


def copy_plots(
    name: str, summary: dict, run_dir: pathlib.Path, doc_dir: pathlib.Path
) -> list[tuple[str, str, str]]:
    """Copy an experiment's PNGs to ``doc_dir/<name>-<plot>.png``; returns (link, caption, src)."""
    doc_dir.mkdir(parents=True, exist_ok=True)
    for stale in doc_dir.glob(f"{name}-*"):
        stale.unlink()
    copied = []
    for path, caption in _plot_entries(summary):
        src = pathlib.Path(path)
        if not src.is_absolute():
            src = run_dir / src
            if not src.is_file():
                src = ROOT / path
        if not src.is_file():
            copied.append(("", caption, f"missing: {path}"))
            continue
        rel = src.relative_to(run_dir) if src.is_relative_to(run_dir) else pathlib.Path(src.name)
        stable = f"{name}-" + "-".join(rel.parts)
        shutil.copyfile(src, doc_dir / stable)
        copied.append((f"{doc_dir.name}/{stable}", caption or rel.stem.replace("_", " "), path))
    return copied


def render_experiment(
    name: str,
    summary: dict,
    summary_path: pathlib.Path,
    doc_dir: pathlib.Path,
    doc_root: pathlib.Path,
) -> list[str]:
    run_dir = summary_path.parent
    lines = [f"## {TITLES.get(name, name)}", ""]
    try:
        shown = summary_path.relative_to(ROOT)
    except ValueError:
        shown = summary_path
    info = [
        ("experiment", f"`{name}`"),
        ("preset", f"`{summary.get('preset', '?')}`"),
        ("wall time", _duration(summary.get("wall_time_s"))),
        ("summary", f"`{shown}`"),
    ]
    if summary.get("command"):
        info.insert(2, ("command", f"`{summary['command']}`"))
    if isinstance(summary.get("train_time_total_s"), int | float):
        info.insert(4, ("training time, all parts", _duration(summary["train_time_total_s"])))
    machine = summary.get("machine")
    if not isinstance(machine, dict):
        config = read_json(run_dir / "config.json")
        machine = config.get("machine") if isinstance(config, dict) else None
    if isinstance(machine, dict):
        desc = ", ".join(
            str(x)
            for x in (
                f"{machine.get('cpu_count')} CPUs" if machine.get("cpu_count") else None,
                machine.get("cpu_model"),
                f"jax {machine['jax']}" if machine.get("jax") else None,
                machine.get("jax_backend"),
            )
            if x
        )
        load = machine.get("loadavg")
        if load is not None:
            start = machine.get("loadavg_at_start")
            desc += f"; load average {fmt(load)}" + (
                f" at the end, {fmt(start)} at the start" if start is not None else ""
            )
        info.append(("machine", desc))
    lines += [f"- **{k}**: {v}" for k, v in info]
    lines.append("")

    has_table = False
    if isinstance(summary.get("table_markdown"), str) and summary["table_markdown"].strip():
        lines += [summary["table_markdown"].strip(), ""]
        has_table = True
    for table in summary.get("tables", []) or []:
        if not isinstance(table, dict) or "rows" not in table:
            continue
        lines += [f"**{table.get('title', 'Results')}**", ""]
        lines += md_table(table.get("columns", []), table["rows"]) + [""]
        has_table = True
    table = summary.get("table")
    if not has_table and isinstance(table, list) and table and isinstance(table[0], dict):
        columns = list(dict.fromkeys(k for row in table for k in row))
        lines += md_table(columns, [[row.get(c) for c in columns] for row in table]) + [""]
        has_table = True

    metrics = flatten(summary.get("metrics", {}))
    paper = flatten(summary.get("paper", {}))
    paired = [(k, paper[k], metrics[k]) for k in paper if k in metrics]
    if paired:
        lines += ["**Ours beside the paper (same metric keys)**", ""]
        lines += md_table(["quantity", "paper", "ours"], [list(p) for p in paired]) + [""]
    paper_only = [(k, v) for k, v in paper.items() if k not in metrics]
    if paper_only and not has_table:
        lines += ["**The paper's numbers**", ""]
        lines += md_table(["quantity", "paper"], [list(p) for p in paper_only]) + [""]
    rest = [(k, v) for k, v in metrics.items() if k not in paper]
    if rest:
        lines += ["<details><summary>All metrics</summary>", ""]
        lines += md_table(["metric", "value"], [list(r) for r in rest]) + ["", "</details>", ""]

    plots = copy_plots(name, summary, run_dir, doc_dir)
    if plots:
        lines += ["**Plots**", ""]
        for link, caption, src in plots:
            if link:
                rel = os.path.relpath(doc_dir / pathlib.Path(link).name, doc_root)
                lines += [f"![{caption}]({rel})", "", f"*{caption}* (`{src}`)", ""]
            else:
                lines += [f"- {caption or src}: plot not found ({src})", ""]
    notes = summary.get("notes")
    if notes:
        lines += ["**Notes**", ""]
        lines += [f"- {n}" for n in (notes if isinstance(notes, list) else [notes])] + [""]
    return lines


def write_report(
    doc: pathlib.Path,
    preset: str,
    entries: list[tuple[str, pathlib.Path | None, dict | None, dict]],
    missing: list[str],
    argv: list[str],
) -> None:
    doc_dir = doc.parent / doc.stem
    m = machine_info(backend=False)
    load = "unknown" if m["loadavg"] is None else ", ".join(f"{x:.2f}" for x in m["loadavg"])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        "# Reproducing the paper's experiments",
        "",
        f"Generated by `python -m experiments.reproduce {' '.join(argv)}` on {now}. "
        "Regenerate the page from existing run folders with "
        f"`python -m experiments.reproduce --preset {preset} --from-existing`.",
        "",
        "Paper: Chen, Rubanova, Bettencourt, Duvenaud, *Neural Ordinary Differential "
        'Equations*, NeurIPS 2018 (the numbers quoted as "paper" are from its tables, '
        "restated in `PAPER.md`).",
        "",
        "## Machine",
        "",
        f"- assembled on: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}, "
        f"Python {m['python']}, jax {m['jax']}; load average {load}",
        "- each experiment's own machine and load are listed in its section (runs may come "
        "from different machines).",
        "",
        "## Overview",
        "",
    ]
    rows = []
    for name, path, summary, run in entries:
        if summary is None:
            status = run.get("status") or "no summary.json found"
            rows.append([name, preset, status, _duration(run.get("wall_time_s")), "—"])
            continue
        try:
            shown = path.parent.relative_to(ROOT)
        except ValueError:
            shown = path.parent
        rows.append(
            [
                f"[{name}](#{_anchor(TITLES.get(name, name))})",
                summary.get("preset", preset),
                run.get("status", "existing run"),
                _duration(summary.get("wall_time_s")),
                f"`{shown}`",
            ]
        )
    for name in missing:
        rows.append([name, preset, "not in experiments/ (skipped)", "—", "—"])
    lines += md_table(["experiment", "preset", "status", "wall time", "run folder"], rows)
    lines.append("")
    for name, path, summary, _ in entries:
        if summary is not None:
            lines += render_experiment(name, summary, path, doc_dir, doc.parent)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines).rstrip() + "\n")
    print(f"[reproduce] wrote {doc} (plots in {doc_dir})", flush=True)


def _anchor(title: str) -> str:
    keep = [c for c in title.lower() if c.isalnum() or c in " -_"]
    return "".join(keep).replace(" ", "-")


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the paper's experiments and write docs/reproduction.md."
    )
    parser.add_argument("--preset", default="small", choices=["smoke", "small", "paper"])
    parser.add_argument("--only", default="", help="comma-separated experiments to run")
    parser.add_argument("--out", default="runs/reproduce", help="parent folder of the runs")
    parser.add_argument(
        "--from-existing",
        action="store_true",
        help="run nothing; regenerate the markdown from existing run folders",
    )
    parser.add_argument(
        "--summary",
        action="append",
        default=[],
        type=pathlib.Path,
        help="an explicit summary.json (or run folder) to include; repeatable",
    )
    parser.add_argument("--doc", default="docs/reproduction.md", help="markdown file to write")
    parser.add_argument("--no-progress", action="store_true", help="pass --no-progress on")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    argv_list = list(argv if argv is not None else sys.argv[1:])
    found, missing = discover()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    for name in only:
        if name not in found:
            print(f"[reproduce] note: no experiment module experiments/{name}.py; skipped")
    for name in missing:
        print(f"[reproduce] note: experiments/{name}.py does not exist yet; skipped")
    out = pathlib.Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    doc = pathlib.Path(args.doc)
    if not doc.is_absolute():
        doc = ROOT / doc
    explicit = [p if p.is_absolute() else pathlib.Path.cwd() / p for p in args.summary]

    runs: dict[str, dict] = {}
    if not args.from_existing:
        to_run = [n for n in found if not only or n in only]
        extra = ["--no-progress"] if args.no_progress else []
        for name in to_run:
            runs[name] = run_experiment(name, args.preset, out / f"{name}-{args.preset}", extra)

    entries = []
    for name in found:
        path = find_summary(name, args.preset, out, explicit)
        if name in runs and runs[name]["status"] != "ok":
            path = path if path is not None and path.is_relative_to(out) else None
        summary = read_json(path) if path is not None else None
        if summary is None and name not in runs:
            print(f"[reproduce] note: no {args.preset} summary.json found for {name}")
        entries.append((name, path, summary, runs.get(name, {})))
    write_report(doc, args.preset, entries, missing, argv_list)
    return {
        "doc": str(doc),
        "experiments": {
            name: {"summary": None if p is None else str(p), **runs.get(name, {})}
            for name, p, _, _ in entries
        },
        "missing": missing,
    }


if __name__ == "__main__":
    main()
