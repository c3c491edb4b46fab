"""Helpers shared by the experiment scripts of ``experiments/`` (private, not library API).

Run folders and their files (atomic JSON/JSONL writes, tolerant reads, starting over with
``--fresh``, cached evaluation records, training time from a Trainer's ``metrics.jsonl``), the
command line every script shares (``--preset``, ``--out``, ``--seed``, ``--no-progress``,
``--fresh`` and ``--set key=value``, typed by the preset: see :func:`resolve_config`),
matplotlib setup and figure saving, and the training helpers several scripts share. Whether a
sub-run may be resumed (same seed, same settings) is checked by
``neuralode.training.Trainer.restore`` itself, for every script alike. Machine information and
table formatting live in ``experiments/_report.py``.

Scripts use it as ``from experiments import _common as C`` (they run as ``python -m
experiments.<name>`` from the repository root). Only the standard library is imported at module
level, so that ``reproduce.py`` stays importable without JAX; the functions that need JAX,
NumPy, Equinox, Optax, matplotlib or ``neuralode`` import them when called.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def json_default(x: Any) -> Any:
    """The ``default`` hook of :func:`json.dumps` for the experiments' files.

    Args:
        x: An object the ``json`` module cannot serialise itself.

    Returns:
        NumPy scalars and NumPy/JAX arrays as (nested lists of) Python numbers, anything else
        as its ``repr``.
    """
    import jax
    import numpy as np

    if isinstance(x, np.generic | jax.Array | np.ndarray):
        return np.asarray(x).tolist()
    return repr(x)


def write_text(path: pathlib.Path, text: str) -> None:
    """Write a file atomically: into a hidden temporary file next to it, then renamed.

    A run killed mid-write leaves the previous version of the file (or none), never half of
    the new one.

    Args:
        path: The file to write.
        text: Its new contents.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON plus a final newline, atomically (see :func:`write_text`).

    Args:
        path: The file to write (``config.json``, ``summary.json``, ...).
        obj: The object to store; NumPy/JAX values are converted by :func:`json_default`.
    """
    write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def write_jsonl(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write records as JSON lines (one compact JSON object a line), atomically.

    Args:
        path: The file to write (``metrics.jsonl``, ``eval.jsonl``, ...).
        records: The records, in file order.
    """
    write_text(path, "".join(json.dumps(r, default=json_default) + "\n" for r in records))


def read_json(path: pathlib.Path, default: Any = None) -> Any:
    """The contents of a JSON file, or ``default`` if it is missing or unreadable.

    Args:
        path: The file to read.
        default: What to return when the file does not exist or is not valid JSON.

    Returns:
        The parsed JSON value, or ``default``.
    """
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The records of a JSON-lines file; lines that do not parse (e.g. one cut short when a run
    was killed) are skipped.

    Args:
        path: The file to read.

    Returns:
        The parsed records in file order; an empty list if the file does not exist.
    """
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------


def start_fresh(path: pathlib.Path) -> pathlib.Path | None:
    """Move an existing run folder aside, so that a run started in it begins from scratch.

    The folder is renamed to a timestamped sibling ``<name>.old-<YYYYmmdd-HHMMSS>`` (with a
    ``-2``, ``-3``, ... suffix if that exists too); nothing is deleted. This is what the
    scripts' ``--fresh`` flag does.

    Args:
        path: The run folder.

    Returns:
        Where the old folder went, or ``None`` if there was no folder or it was empty.

    Example:
        >>> start_fresh(pathlib.Path("runs/spirals-smoke"))  # doctest: +SKIP
        PosixPath('runs/spirals-smoke.old-20250101-120000')
    """
    if not path.is_dir() or not any(path.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    counter = 2
    while target.exists():
        target = path.with_name(f"{path.name}.old-{stamp}-{counter}")
        counter += 1
    path.rename(target)
    print(f"--fresh: moved the previous run folder {path} to {target}", flush=True)
    return target


def run_folder(
    out: str | None, experiment: str, preset: str, *, fresh: bool = False
) -> pathlib.Path:
    """Create (if needed) and return the run folder of an experiment.

    Args:
        out: The ``--out`` argument, or ``None`` for the default ``runs/<experiment>-<preset>``.
        experiment: The experiment's name.
        preset: The preset's name.
        fresh: Move an existing folder aside first (:func:`start_fresh`).

    Returns:
        The run folder.
    """
    path = pathlib.Path(out or f"runs/{experiment}-{preset}")
    if fresh:
        start_fresh(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_time(metrics_path: pathlib.Path, upto_step: int | None = None) -> float:
    """Total training wall time from a Trainer's ``metrics.jsonl``.

    The ``time`` column restarts at every (re)start of ``fit``, so the last value of every
    segment is summed.

    Args:
        metrics_path: The Trainer's ``metrics.jsonl``.
        upto_step: If given, only records up to this step count.

    Returns:
        Seconds; ``0.0`` if the file does not exist.
    """
    total, last = 0.0, 0.0
    for rec in read_jsonl(metrics_path):
        if upto_step is not None and rec["step"] > upto_step:
            break
        if rec["time"] < last:
            total += last
        last = rec["time"]
    return total + last


def cached_eval(
    run_dir: pathlib.Path, step: int, settings: Any, *needs: pathlib.Path
) -> dict[str, Any] | None:
    """The evaluation record a previous invocation stored for the same model, if still valid.

    Args:
        run_dir: The sub-run's folder; the record is its ``eval.json`` (with ``step`` and
            ``settings``), written by :func:`store_eval`.
        step: The training step of the model now at hand.
        settings: The evaluation settings now in force.
        *needs: Files written with the record (e.g. arrays for the plots) that must exist.

    Returns:
        The stored record if it was made at ``step`` with ``settings`` and every file in
        ``needs`` exists, else ``None`` (evaluate again).
    """
    cached = read_json(run_dir / "eval.json", {})
    valid = cached.get("step") == step and cached.get("settings") == settings
    return cached if valid and all(p.is_file() for p in needs) else None


def store_eval(run_dir: pathlib.Path, record: Mapping[str, Any]) -> None:
    """Store a sub-run's evaluation record (``eval.json``; see :func:`cached_eval`)."""
    write_json(run_dir / "eval.json", record)


def write_combined_metrics(
    out: pathlib.Path, parts: Iterable[tuple[pathlib.Path, Mapping[str, Any]]]
) -> None:
    """Rebuild ``out/metrics.jsonl`` from the training logs of an experiment's sub-runs.

    Args:
        out: The run folder.
        parts: ``(sub-run folder, tags)`` pairs, in the order their records are written; every
            record of the sub-run's ``metrics.jsonl`` is written as ``{**tags, **record}``.
    """
    import neuralode as nde

    combined = [
        {**tags, **rec}
        for run_dir, tags in parts
        for rec in read_jsonl(run_dir / nde.training.METRICS_NAME)
    ]
    write_jsonl(out / nde.training.METRICS_NAME, combined)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Script:
    """The command line and configuration of one experiment script.

    Every script has the same options: ``--preset`` (default ``small``), ``--out`` (default
    ``runs/<name>-<preset>``), ``--seed`` (default 0), ``--no-progress``, ``--fresh`` (start
    over, moving an existing run folder aside: :func:`start_fresh`; without it a script resumes
    what its run folder holds and refuses to resume a model trained with other settings) and
    ``--set KEY=VALUE`` (repeatable: override an entry of the preset, see
    :func:`resolve_config`).

    Args:
        name: The experiment's name (``EXPERIMENT``).
        doc: The script's docstring; its first line is the ``--help`` description.
        presets: ``PRESETS``: preset name -> settings.
        choices: Settings whose items must come from a list, e.g. ``{"models": MODELS}``.
        options: Further ``(flag, argparse keyword arguments)`` of this script only (inputs
            such as ``--from``, never settings: those belong in the presets).
    """

    name: str
    doc: str
    presets: Mapping[str, Mapping[str, Any]]
    choices: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    options: Sequence[tuple[str, Mapping[str, Any]]] = ()

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=f"python -m experiments.{self.name}", description=self.doc.splitlines()[0]
        )
        parser.add_argument("--preset", choices=sorted(self.presets), default="small")
        parser.add_argument(
            "--out", default=None, help=f"run folder (default runs/{self.name}-<preset>)"
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="start over: move an existing run folder aside to <out>.old-<timestamp> "
            "(default: resume it; a resume with other settings is refused)",
        )
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a preset entry, typed like the preset's value (repeatable), e.g. "
            "--set steps=500 --set sizes=2,8",
        )
        for flag, kwargs in self.options:
            parser.add_argument(flag, **kwargs)
        return parser

    def parse_args(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        return self.parser().parse_args(argv)

    def start(self, argv: Sequence[str] | None = None) -> Invocation:
        """Parse ``argv``, resolve and check the configuration, create the run folder."""
        args = self.parse_args(argv)
        cfg = resolve_config(self.presets, args.preset, args.overrides)
        for key, allowed in self.choices.items():
            for value in cfg[key]:
                if value not in allowed:
                    raise SystemExit(
                        f"unknown {key} entry {value!r}; choose from {', '.join(allowed)}"
                    )
        out = run_folder(args.out, self.name, args.preset, fresh=args.fresh)
        return Invocation(self.name, args, cfg, out, time.perf_counter())


@dataclasses.dataclass
class Invocation:
    """One invocation of an experiment script: arguments, configuration, run folder, start."""

    name: str
    args: argparse.Namespace
    cfg: dict[str, Any]
    out: pathlib.Path
    t_start: float

    @property
    def progress(self) -> bool:
        return not self.args.no_progress

    def elapsed(self) -> float:
        """Seconds since the invocation started."""
        return time.perf_counter() - self.t_start

    def config(self, *, device: bool = False, **extra: Any) -> dict[str, Any]:
        """The run folder's ``config.json``: experiment, preset, seed, the resolved settings
        (``preset_config``), ``extra`` and the runtime (:func:`_report.runtime_info`)."""
        from experiments._report import runtime_info

        return {
            "experiment": self.name,
            "preset": self.args.preset,
            "seed": self.args.seed,
            "preset_config": self.cfg,
            **extra,
            **runtime_info(device=device),
        }

    def write_config(self, *, device: bool = False, **extra: Any) -> dict[str, Any]:
        """Write :meth:`config` to the run folder's ``config.json``."""
        config = self.config(device=device, **extra)
        write_json(self.out / "config.json", config)
        return config

    def trainer(self, run_dir: pathlib.Path, loss_fn: Any, optimizer: Any, batch_fn: Any,
                config: Mapping[str, Any], **options: Any) -> Any:
        """A ``neuralode.training.Trainer`` for one model of this experiment in ``run_dir``.

        It is seeded by ``--seed``, logs and checkpoints at the preset's ``log_every`` and
        ``checkpoint_every`` (``options`` override these and add others, e.g. ``callbacks``),
        shows progress unless ``--no-progress``, and stores ``{"experiment": name, **config}``,
        so it refuses to resume a model trained with another ``config``.
        """
        import neuralode as nde

        settings = {
            "checkpoint_every": self.cfg["checkpoint_every"],
            "log_every": self.cfg["log_every"],
            "progress": self.progress,
            **options,
        }
        return nde.training.Trainer(
            loss_fn, optimizer, batch_fn, seed=self.args.seed, run_dir=run_dir,
            config={"experiment": self.name, **config}, **settings,
        )

    def fit(self, trainer: Any, model: Any, steps: int, what: str) -> Any:
        """Announce ``what`` is trained where, then ``trainer.fit(model, steps)``."""
        print(f"[{self.name}] {what} -> {trainer.run_dir}", flush=True)
        return trainer.fit(model, steps)

    def summary(self, wall_time_s: float, **fields: Any) -> dict[str, Any]:
        """The summary every experiment writes (the format ``reproduce.py`` reads): name,
        preset, seed, the run's wall time, this invocation's time, then ``fields`` and the
        settings."""
        return {
            "experiment": self.name,
            "preset": self.args.preset,
            "seed": self.args.seed,
            "wall_time_s": wall_time_s,
            "invocation_time_s": self.elapsed(),
            **fields,
            "config": self.cfg,
        }

    def finish(self, wall_time_s: float, table_markdown: str, plots: list[str],
               **fields: Any) -> dict:
        """Write ``table.md`` (the results table, markdown) and ``summary.json`` (see
        :meth:`summary`, with ``table_markdown`` and ``plots``), print the table and where
        everything went; returns the summary."""
        write_text(self.out / "table.md", table_markdown)
        summary = self.summary(wall_time_s, table_markdown=table_markdown, plots=plots, **fields)
        write_json(self.out / "summary.json", summary)
        print(table_markdown)
        print(f"[{self.name}] wrote {self.out / 'summary.json'}, {self.out / 'table.md'}, "
              + ", ".join(str(self.out / p) for p in plots))
        return summary


_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


def _parse_scalar(text: str, like: Any) -> Any:
    """``text`` as the type of ``like`` (a bool, int, float or str; ``None``: inferred)."""
    low = text.strip().lower()
    if low in _NONE:
        return None
    if isinstance(like, bool):
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, str):
        return {"true": True, "false": False}.get(low, text.strip())
    for kind in (int, float):  # like is None: the most specific type that parses
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(low, text.strip())


def parse_override(text: str, like: Any) -> Any:
    """A ``--set`` value, typed by the preset's value ``like``.

    Booleans take ``true/false`` (``yes/no``, ``on/off``, ``1/0``); ints and floats their
    literals; lists and tuples comma-separated items (``2,8,32``; ``[]`` for none) typed like
    the preset's first item; strings are taken as they are (``true``/``false`` become booleans,
    for settings such as ``im2col=auto|true|false``). ``none``/``null`` is ``None`` for any key.
    Where the preset's value is ``None`` the type is inferred (int, float, else string).

    Raises:
        ValueError: the text does not parse as the preset's type.
    """
    if isinstance(like, list | tuple):
        body = text.strip().strip("[]()")
        item_like = like[0] if like else None
        items = [_parse_scalar(x, item_like) for x in body.split(",") if x.strip()]
        return type(like)(items)
    return _parse_scalar(text, like)


def resolve_config(
    presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Sequence[str]
) -> dict[str, Any]:
    """The preset's settings with the ``--set key=value`` overrides applied (typed by the
    preset, see :func:`parse_override`). Every experiment script reads its configuration this
    way, so every preset entry can be changed from the command line.

    Raises:
        SystemExit: an unknown preset or key, a malformed item, or a value that does not parse.
    """
    if preset not in presets:
        raise SystemExit(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    cfg = dict(presets[preset])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        if key not in cfg:
            raise SystemExit(f"--set: unknown key {key!r}; known keys: {', '.join(sorted(cfg))}")
        try:
            cfg[key] = parse_override(value, cfg[key])
        except ValueError as err:
            raise SystemExit(f"--set {key}: {err}") from None
    return cfg


def presets_from_columns(
    settings: Mapping[str, Sequence[Any]], names: Sequence[str] = ("smoke", "small", "paper")
) -> dict[str, dict[str, Any]]:
    """Presets from a table ``{key: (value in preset 1, value in preset 2, ...)}``.

    Scripts write their presets as such a table, one line a setting with its values side by
    side, so the presets cannot drift apart in their keys and their differences are visible.
    """
    for key, values in settings.items():
        if len(values) != len(names):
            raise ValueError(f"setting {key!r} has {len(values)} values for {len(names)} presets")
    return {name: {k: v[i] for k, v in settings.items()} for i, name in enumerate(names)}


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend (plots are only saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: pathlib.Path) -> str:
    """Lay out a matplotlib figure, save it at 100 dpi and close it.

    Args:
        fig: The figure.
        path: The image file to write (its format follows the suffix).

    Returns:
        The file's name, as listed in the summary's ``plots``.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------------------------------
# Models and training
# ---------------------------------------------------------------------------------------------


_SOLVERS = {"tsit5": "Tsit5", "dopri5": "Dopri5", "dopri8": "Dopri8", "bosh3": "Bosh3"}
_ADJOINTS = {
    "backsolve": "BacksolveAdjoint",
    "checkpoint": "CheckpointAdjoint",
    "interpolated": "InterpolatedAdjoint",
}


def solve_options(solver: str = "tsit5", adjoint: str = "checkpoint", **options: Any) -> Any:
    """``nde.nn.SolveOptions`` from the names a preset uses (``solver="dopri5"``,
    ``adjoint="backsolve"``) and further options (``rtol``, ``atol``, ``max_steps``, ...).

    Raises:
        SystemExit: an unknown solver or gradient mode.
    """
    import neuralode as nde

    if solver not in _SOLVERS or adjoint not in _ADJOINTS:
        raise SystemExit(
            f"unknown solver {solver!r} or adjoint {adjoint!r}; solvers: {', '.join(_SOLVERS)}; "
            f"adjoints: {', '.join(_ADJOINTS)}"
        )
    return nde.nn.SolveOptions(
        solver=getattr(nde, _SOLVERS[solver])(), adjoint=getattr(nde, _ADJOINTS[adjoint])(),
        **options,
    )


def count_params(model: Any) -> int:
    """The number of trainable (inexact-array) parameters of an Equinox model."""
    import equinox as eqx
    import jax

    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))))


def learning_rate(lr: float, iters: int, schedule: str) -> Any:
    """A constant learning rate, or a 5% linear warm-up then cosine decay to ``lr / 100``.

    Args:
        lr: The peak learning rate.
        iters: The number of training iterations the schedule spans.
        schedule: ``"constant"`` or ``"cosine"``.

    Returns:
        ``lr`` itself, or an Optax schedule.

    Raises:
        ValueError: For another ``schedule``.
    """
    import optax

    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, max(iters // 20, 1), max(iters, 2), end_value=lr / 100
        )
    if schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}")
    return lr
