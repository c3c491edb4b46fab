"""Helpers shared by the experiment scripts of ``experiments/`` (private, not library API).

Run folders and their files (atomic JSON/JSONL writes, tolerant reads, starting over with
``--fresh``, cached evaluation records, training time from a Trainer's ``metrics.jsonl``),
machine information, command-line boilerplate, matplotlib setup and figure saving, and the CNF
helpers that ``density_matching.py`` and ``max_likelihood.py`` share. Whether a sub-run may be
resumed (same seed, same settings) is checked by ``neuralode.training.Trainer.restore`` itself,
for every script alike.

Scripts use it as ``from experiments import _common as C``, both when imported as
``experiments.<name>`` and when run as ``python experiments/<name>.py`` or loaded from their
file (they then put the repository root on ``sys.path`` first). Only the standard library is
imported at module level, so that ``reproduce.py`` stays importable without JAX; the functions
that need JAX, NumPy, Equinox, Optax, matplotlib or ``neuralode`` import them when called.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import neuralode as nde

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
    path: pathlib.Path, step: int, settings: Any, *needs: pathlib.Path
) -> dict[str, Any] | None:
    """The evaluation record a previous invocation stored for the same model, if still valid.

    Args:
        path: The sub-run's ``eval.json`` (a record with ``step`` and ``settings``).
        step: The training step of the model now at hand.
        settings: The evaluation settings now in force.
        *needs: Files written with the record (e.g. arrays for the plots) that must exist.

    Returns:
        The stored record if it was made at ``step`` with ``settings`` and every file in
        ``needs`` exists, else ``None`` (evaluate again).
    """
    cached = json.loads(path.read_text()) if path.is_file() else {}
    valid = cached.get("step") == step and cached.get("settings") == settings
    return cached if valid and all(p.is_file() for p in needs) else None


def write_summary(
    out: pathlib.Path, experiment: str, summary: Mapping[str, Any], table: str, plots: Iterable[str]
) -> None:
    """Write ``out/summary.json``, print the results table and where everything went."""
    write_json(out / "summary.json", summary)
    print(table)
    print(f"[{experiment}] wrote {out / 'summary.json'}, {out / 'table.md'}, "
          + ", ".join(str(out / p) for p in plots))


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
# Machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or ``None`` where the platform has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU count and model, load average, platform and library versions, JAX backend and
    devices (initialises the JAX backend)."""
    import jax

    import neuralode as nde

    load = load_average()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg": None if load is None else [round(x, 2) for x in load],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "neuralode": getattr(nde, "__version__", "unknown"),
    }


def runtime_info(*, device: bool = False) -> dict[str, Any]:
    """The JAX version, backend and CPU count that a run folder's ``config.json`` records.

    Args:
        device: Also record the first JAX device (as ``"device"``, before ``"cpu_count"``).

    Returns:
        ``{"jax_version", "backend", ["device",] "cpu_count"}``.
    """
    import jax

    info: dict[str, Any] = {"jax_version": jax.__version__, "backend": jax.default_backend()}
    if device:
        info["device"] = str(jax.devices()[0])
    info["cpu_count"] = os.cpu_count()
    return info


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def experiment_parser(
    description: str,
    presets: Iterable[str],
    experiment: str,
    *,
    progress_help: str = "hide the tqdm bars",
) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment script has.

    ``--preset`` (default ``small``), ``--out`` (default ``runs/<experiment>-<preset>``),
    ``--seed`` (default 0), ``--no-progress`` and ``--fresh``; scripts add their own options
    to it.

    Args:
        description: The parser's description (the script docstring's first line).
        presets: The preset names ``--preset`` accepts.
        experiment: The experiment's name, for the help text of ``--out``.
        progress_help: The help text of ``--no-progress``.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(presets), default="small")
    parser.add_argument(
        "--out", default=None, help=f"run folder (default runs/{experiment}-<preset>)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help=progress_help)
    add_fresh_flag(parser)
    return parser


def add_fresh_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--fresh``: start over, moving an existing run folder aside (:func:`start_fresh`).

    Without it a script resumes what its run folder holds, and refuses to resume a model
    trained with other settings (``neuralode.training.Trainer.restore``).
    """
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start over: move an existing run folder aside to <out>.old-<timestamp> "
        "(default: resume it; a resume with other settings is refused)",
    )


def comma_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option value such as ``"a, b,"``."""
    return [x.strip() for x in text.split(",") if x.strip()]


def set_given(cfg: dict[str, Any], **values: Any) -> None:
    """Override preset entries by the command-line options that were given.

    Args:
        cfg: The configuration, changed in place.
        **values: ``key=value`` per option; ``None`` (an option not given) leaves ``cfg[key]``
            as it is.
    """
    for key, value in values.items():
        if value is not None:
            cfg[key] = value


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


def average_units_at_init(cnf: nde.nn.CNF) -> nde.nn.CNF:
    """Scale the initial ``u_n`` of a planar CNF by ``1/M``.

    ``PlanarCNFField`` sums its ``M`` units, so at initialisation the field (and, over a long
    time span such as ``t ∈ [0, 10]``, the flow) grows with ``M``; for large ``M`` the first
    samples land far out in the target's tails and training starts unstable and expensive
    (NFE > 100). The reference code (``torchdiffeq/examples/cnf.py``) averages the units
    instead. Scaling the hypernetwork's output rows of ``u`` by ``1/M`` gives that initial field
    while keeping the paper's (and the library's) parametrisation; training is free to grow
    ``u`` again.

    Args:
        cnf: A CNF built by ``nde.nn.planar_cnf``.

    Returns:
        The same CNF with the last hypernetwork layer's ``u`` rows scaled.
    """
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    field = cnf.field
    m, d = field.width, field.dim
    last = field.hyper.layers[-1]
    scale = jnp.ones(last.bias.shape, last.bias.dtype).at[m * d : 2 * m * d].set(1.0 / m)
    new = eqx.tree_at(
        lambda c: (c.field.hyper.layers[-1].weight, c.field.hyper.layers[-1].bias),
        cnf,
        (last.weight * scale[:, None], last.bias * scale),
    )
    # guard the output layout: U scaled by 1/M, W, b and the gates unchanged
    before, after = field.parameters(0.3), new.field.parameters(0.3)
    for i, factor in enumerate((1.0, 1.0 / m, 1.0, 1.0)):
        assert np.allclose(after[i], factor * before[i], rtol=1e-5, atol=1e-7), i
    return new


def cnf_with(model: nde.nn.CNF, **options: Any) -> nde.nn.CNF:
    """The same CNF (same field and base) with other trace or solver options.

    Args:
        model: The CNF.
        **options: Constructor arguments of ``nde.nn.CNF`` to change (``rtol``, ``trace``,
            ``throw``, ``max_steps``, ...).

    Returns:
        A new CNF sharing ``model``'s field.
    """
    import neuralode as nde

    kwargs = dict(
        base=model.base,
        t0=model.t0,
        t1=model.t1,
        trace=model.trace,
        noise=model.noise,
        solver=model.solver,
        rtol=model.rtol,
        atol=model.atol,
        adjoint=model.adjoint,
        max_steps=model.max_steps,
        dt0=model.dt0,
        throw=model.throw,
    )
    kwargs.update(options)
    return nde.nn.CNF(model.field, **kwargs)
