"""Report helpers shared by the experiments and ``reproduce.py``: the machine, numbers, tables.

Only the standard library is imported at module level (``reproduce.py`` stays importable
without JAX); :func:`machine_info` imports JAX when asked for the backend.
"""

from __future__ import annotations

import os
import pathlib
import platform
from collections.abc import Sequence
from typing import Any


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


def machine_info(*, backend: bool = True) -> dict[str, Any]:
    """CPU count and model, load average, platform and library versions.

    Args:
        backend: Also record the JAX backend and devices and the neuralode version (this
            initialises the JAX backend; ``reproduce.py``, whose experiments run in
            subprocesses, passes ``False``).
    """
    load = load_average()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg": None if load is None else [round(x, 2) for x in load],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import jax
    except ImportError:  # pragma: no cover
        info["jax"] = "not installed"
        return info
    info["jax"] = jax.__version__
    if backend:
        import neuralode as nde

        info["jax_backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
        info["neuralode"] = getattr(nde, "__version__", "unknown")
    return info


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


def fmt(value: Any, spec: str | None = None, missing: str = "—") -> str:
    """One table cell.

    Args:
        value: The value; ``None`` shows as ``missing``.
        spec: A format spec for numbers (e.g. ``".4f"``); default: integers as they are,
            floats with 4 significant digits (scientific outside ``[1e-3, 1e5)``), booleans as
            yes/no, lists item by item, anything else as text (``|`` escaped).
        missing: What ``None`` shows as.
    """
    if value is None:
        return missing
    if spec is not None:
        return format(value, spec)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def captioned_table(caption: str, columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A caption, a blank line and :func:`md_table`, as one markdown text (``table.md``)."""
    return "\n".join([caption, "", *md_table(columns, rows)]) + "\n"


def md_table(columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table as lines; cells go through :func:`fmt`, short rows are padded."""
    lines = ["| " + " | ".join(fmt(c) for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [fmt(c) for c in row] + [""] * (len(columns) - len(row))
        lines.append("| " + " | ".join(cells[: len(columns)]) + " |")
    return lines
