"""How a training run fails: :class:`TrainingError`, runtime error messages, TPU error mode."""

from __future__ import annotations

import os
import pathlib


class TrainingError(RuntimeError):
    """A training run stopped because it cannot go on; the last good state is kept.

    Raised by :meth:`Trainer.fit` when a step fails at run time (e.g. an ODE solve inside the
    loss exhausts ``max_steps``) or after too many consecutive non-finite steps.

    Attributes:
        step: the 1-based number of the step that failed (the run had completed
            ``step - 1`` steps).
        samples: indices into that step's batch of the samples that fail on their own (empty
            if none does), or ``None`` if they were not looked for.
        checkpoint: the checkpoint file holding the last good state, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        samples: list[int] | None = None,
        checkpoint: pathlib.Path | None = None,
    ):
        super().__init__(message)
        self.step = step
        self.samples = samples
        self.checkpoint = checkpoint


def error_message(error: BaseException) -> str:
    """The human part of a runtime error: Equinox's message without the stack around it."""
    text = str(error)
    marker = "EquinoxRuntimeError: "
    if marker in text:
        text = text.rsplit(marker, 1)[1].split("\n\n-------------------", 1)[0]
    return text.strip() or type(error).__name__


def check_error_mode(platforms: set[str]) -> None:
    """Refuse TPU training while Equinox runtime errors are in their default ``raise`` mode.

    On TPU, Equinox cannot raise a runtime error (``eqx.error_if``, e.g. a failed ODE solve
    with ``throw=True``); it prints the message and waits for input, which hangs a batch job.
    ``EQX_ON_ERROR=nan`` makes failed computations return NaN instead: the Trainer then skips
    those steps and stops after ``max_nonfinite_steps`` in a row.
    """
    mode = os.environ.get("EQX_ON_ERROR", "raise")
    if "tpu" in platforms and mode not in ("nan", "off"):
        raise RuntimeError(
            f"Trainer on TPU with EQX_ON_ERROR={mode!r}: on TPU an Equinox runtime error (e.g. "
            "a failed ODE solve with throw=True) cannot raise and waits for input instead, "
            "which would hang this job. Set the environment variable EQX_ON_ERROR=nan before "
            "Python starts (failed solves then give NaN, and the Trainer skips those steps and "
            "stops after `max_nonfinite_steps` in a row). See docs/training.md."
        )
