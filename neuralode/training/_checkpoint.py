"""Checkpoints and run-directory files: atomic writes, checksums, the kept history, resume.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoint.eqx`` and the last few
``checkpoint-<step>.eqx``. Every file is written atomically (a temporary file, ``fsync``, then
``os.replace``), so a crash leaves the previous version or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import re
import secrets
from collections.abc import Callable
from typing import Any, BinaryIO

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PyTree

CHECKPOINT_NAME = "checkpoint.eqx"
"""File name of the latest checkpoint inside a run directory (older ones are kept as
``checkpoint-<step>.eqx`` next to it)."""
METRICS_NAME = "metrics.jsonl"
"""File name of the JSON-lines metrics log inside a run directory."""
CONFIG_NAME = "config.json"
"""File name of the run configuration inside a run directory."""

_CKPT_MAGIC_V1 = b"NEURALODE-CHECKPOINT v1\n"
_CKPT_MAGIC = b"NEURALODE-CHECKPOINT v2\n"
_HISTORY_RE = re.compile(r"^checkpoint-(\d+)\.eqx$")
_TEMP_RE = re.compile(r"^\.(checkpoint(-\d+)?\.eqx|config\.json|metrics\.jsonl)\.[^/]*\.tmp$")


class CheckpointCorruptError(ValueError):
    """A checkpoint file is damaged: bad magic bytes, a checksum mismatch, or cut short.

    The message names the file. :meth:`Trainer.restore` falls back to an older checkpoint
    when it meets one.
    """


def to_host(tree: PyTree) -> PyTree:
    """Arrays that span several processes (replicated) -> this process's full local copy."""

    def convert(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(
                    "cannot checkpoint an array that is sharded across processes; replicate "
                    "the model and optimiser state (see neuralode.training.replicate)."
                )
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree.map(convert, tree)


def _fsync_dir(directory: pathlib.Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(path: pathlib.Path) -> pathlib.Path:
    """A fresh hidden name next to ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _open_new(path: pathlib.Path) -> BinaryIO:
    """Create ``path`` for writing; its mode is 0o666 less the umask, like any new file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


def atomic_write(path: pathlib.Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temporary file in the same directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with _open_new(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def checkpoint_bytes(tree: PyTree, metadata: dict[str, Any] | None) -> bytes:
    """The file contents: magic line, checksum line, metadata line, serialised leaves.

    The checksum is the SHA-256 of everything after the checksum line.
    """
    header = json.dumps(metadata or {}, sort_keys=True).encode()
    if b"\n" in header:  # json.dumps never emits raw newlines; guard the format anyway
        raise ValueError("`metadata` must serialise to a single line of JSON.")
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, to_host(tree))
    body = header + b"\n" + buffer.getvalue()
    return _CKPT_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def save_checkpoint(
    path: str | os.PathLike[str], tree: PyTree, metadata: dict[str, Any] | None = None
) -> None:
    """Save the arrays of ``tree`` and a JSON-able ``metadata`` dict to ``path``, atomically.

    The file is written to a temporary file next to ``path``, flushed to disk, then renamed
    over ``path``: a crash at any moment leaves either the previous checkpoint or the new one,
    never a partial file. It carries a SHA-256 checksum of its contents, which
    :func:`load_checkpoint` verifies. The pytree structure is not stored;
    :func:`load_checkpoint` takes a ``like`` pytree of the same structure (as
    ``eqx.tree_serialise_leaves`` does). The file's permissions follow the umask.

    Args:
        path: destination file.
        tree: a pytree (e.g. ``(model, opt_state)``).
        metadata: small JSON-serialisable dict stored in the header (e.g. step and seed).

    Example:
        >>> import jax.numpy as jnp
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.eqx"
        >>> save_checkpoint(path, {"w": jnp.ones(3)}, {"step": 7})
        >>> tree, meta = load_checkpoint(path, {"w": jnp.zeros(3)})
        >>> meta["step"], tree["w"].tolist()
        (7, [1.0, 1.0, 1.0])
    """
    data = checkpoint_bytes(tree, metadata)
    atomic_write(pathlib.Path(path), lambda f: f.write(data))


def read_checkpoint(path: pathlib.Path) -> tuple[dict[str, Any], bytes]:
    """``(metadata, serialised leaves)`` of a checkpoint file, its checksum verified.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointCorruptError: bad magic bytes, checksum mismatch, unreadable metadata.
    """
    raw = path.read_bytes()
    where = f"checkpoint {str(path)!r}"
    remedy = (
        "Resume from an older checkpoint (the Trainer does so by itself), restore the file from "
        "a backup, or start over (resume=False; the experiment scripts: --fresh)."
    )
    if raw.startswith(_CKPT_MAGIC):
        checksum, sep, body = raw[len(_CKPT_MAGIC) :].partition(b"\n")
        if not sep or hashlib.sha256(body).hexdigest().encode() != checksum:
            raise CheckpointCorruptError(
                f"{where} is corrupt: its SHA-256 checksum does not match its contents (the "
                f"file is damaged or cut short; {len(raw)} bytes). {remedy}"
            )
    elif raw.startswith(_CKPT_MAGIC_V1):  # written before checksums existed
        body = raw[len(_CKPT_MAGIC_V1) :]
    else:
        raise CheckpointCorruptError(
            f"{str(path)!r} is not a neuralode checkpoint (bad magic bytes). {remedy}"
        )
    header, _, payload = body.partition(b"\n")
    try:
        metadata = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointCorruptError(
            f"{where} is corrupt: unreadable metadata ({e}). {remedy}"
        ) from e
    if not isinstance(metadata, dict):
        raise CheckpointCorruptError(f"{where} is corrupt: its metadata is not a dict. {remedy}")
    return metadata, payload


def deserialise(path: pathlib.Path, payload: bytes, like: PyTree) -> PyTree:
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:
        raise ValueError(
            f"could not load checkpoint {str(path)!r}: it does not match the "
            f"structure/shapes/dtypes of `like` ({type(e).__name__}: {e}). Build `like` (the "
            "model and optimiser) exactly as for the run that wrote it."
        ) from e


def load_checkpoint(path: str | os.PathLike[str], like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Args:
        path: the checkpoint file.
        like: a pytree with the structure, shapes and dtypes of the saved one (e.g. a freshly
            initialised ``(model, opt_state)``).

    Returns:
        ``(tree, metadata)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointCorruptError: the file is not a checkpoint or is damaged (a ``ValueError``;
            the message names the file).
        ValueError: the file does not match ``like``.
    """
    path = pathlib.Path(path)
    metadata, payload = read_checkpoint(path)
    return deserialise(path, payload, like), metadata


def _history_path(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    return run_dir / f"checkpoint-{step}.eqx"


def kept_checkpoints(run_dir: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """The kept checkpoints ``checkpoint-<step>.eqx`` of a run directory, newest first."""
    found = []
    for path in run_dir.glob("checkpoint-*.eqx"):
        match = _HISTORY_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def write_checkpoint_files(run_dir: pathlib.Path, step: int, data: bytes, keep: int) -> None:
    """Write ``data`` as ``checkpoint-<step>.eqx`` and ``checkpoint.eqx``; prune old ones.

    Both names are written atomically (a hard link where the file system allows it, else a
    second copy), the history one first: a kill at any moment leaves every name either
    complete or absent. Only the ``keep`` newest ``checkpoint-<step>.eqx`` are kept.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    latest, history = run_dir / CHECKPOINT_NAME, _history_path(run_dir, step)
    tmp = _temp_path(latest)
    try:
        with _open_new(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            link = _temp_path(history)
            os.link(tmp, link)
            os.replace(link, history)
        except OSError:  # no hard links here: write the history copy separately
            atomic_write(history, lambda f: f.write(data))
        os.replace(tmp, latest)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for _, old in kept_checkpoints(run_dir)[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
    _fsync_dir(run_dir)


def remove_temp_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporary files that writes interrupted by a crash left in ``run_dir``."""
    removed = []
    for path in run_dir.glob(".*.tmp"):
        if _TEMP_RE.match(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def json_normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two run configurations, as readable lines.

    Values are compared as JSON (tuples equal lists; other objects by ``repr``); a key present
    on one side only counts as changed. :meth:`Trainer.restore` uses it to refuse resuming a
    run with other settings.

    Args:
        stored: the configuration the run was started with.
        current: the configuration now.

    Returns:
        One ``"key: stored -> current"`` line per changed key, sorted by key; empty if equal.

    Example:
        >>> changed_settings({"lr": 0.01, "steps": 10}, {"lr": 0.02, "steps": 10})
        ['lr: 0.01 -> 0.02']
    """
    a, b = json_normalise(stored), json_normalise(current)
    missing = "(absent)"
    return [
        f"{key}: {json.dumps(a[key]) if key in a else missing} -> "
        f"{json.dumps(b[key]) if key in b else missing}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing) or (key in a) != (key in b)
    ]


def truncate_metrics(path: pathlib.Path, max_step: int) -> None:
    """Drop log lines of steps after the checkpoint being resumed (they will be redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the kill
        if record.get("step", 0) <= max_step:
            keep.append(json.dumps(record))
    text = "".join(line + "\n" for line in keep).encode()
    atomic_write(path, lambda f: f.write(text))
