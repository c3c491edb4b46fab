"""The training loop: :class:`Trainer` (and :func:`fit`), reproducible and resumable.

See ``docs/training.md`` for what it guarantees: non-finite steps skipped, checksummed
checkpoints with the last few kept, refused resumes with other settings, and failures on any
device raised as :class:`~neuralode.training.TrainingError` with the last good state kept.
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._checks import check_bool, check_callable, check_instance, check_int
from ._checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    CheckpointCorruptError,
    atomic_write,
    changed_settings,
    checkpoint_bytes,
    deserialise,
    json_normalise,
    kept_checkpoints,
    read_checkpoint,
    remove_temp_files,
    to_host,
    truncate_metrics,
    write_checkpoint_files,
)
from ._errors import TrainingError, check_error_mode, error_message
from ._sharding import is_array, replicate, shard_batch
from ._step import (
    BatchFn,
    LossFn,
    check_step_args,
    grads_jit,
    grads_program,
    step_keys,
    update_donating,
    update_plain,
)


class TrainState(eqx.Module):
    """Everything that changes during training: model, optimiser state and the step counter.

    Attributes:
        model: the Equinox model (any pytree).
        opt_state: the optax optimiser state.
        step: number of completed optimisation steps (skipped non-finite steps included).
    """

    model: PyTree
    opt_state: PyTree
    step: int


def _strong(tree: PyTree) -> PyTree:
    """Drop weak types so fresh and checkpoint-loaded states trace (and round) identically."""
    return jax.tree.map(
        lambda x: jax.lax.convert_element_type(x, x.dtype) if isinstance(x, jax.Array) else x,
        tree,
    )


_DEVICE_PUT_COPIES = "may_alias" in inspect.signature(jax.device_put).parameters


def _copy_arrays(tree: PyTree) -> PyTree:
    """Fresh device buffers for every JAX array of ``tree``, so donating them harms no caller.

    ``jax.device_put(x, may_alias=False)`` copies without compiling anything (older JAX: a
    compiled copy per shape).
    """

    def copy(x):
        if not isinstance(x, jax.Array):
            return x
        return jax.device_put(x, may_alias=False) if _DEVICE_PUT_COPIES else jnp.array(x, copy=True)

    return jax.tree.map(copy, tree)


def _host_all_finite(tree: PyTree) -> bool:
    """Whether every floating-point entry of ``tree`` is finite, checked on the host."""
    return all(
        bool(np.all(np.isfinite(np.asarray(x))))
        for x in jax.tree.leaves(tree)
        if eqx.is_inexact_array(x)
    )


def _scalar_metrics(aux: dict[str, Any]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for name, value in to_host(aux).items():
        if is_array(value) or isinstance(value, (int, float)):
            if np.size(value) != 1:
                continue
            value = np.asarray(value).reshape(())
            if np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.bool_):
                out[str(name)] = int(value)
            elif np.issubdtype(value.dtype, np.floating):
                out[str(name)] = float(value)
    return out


def _host_value(x: Any) -> np.ndarray:
    """``x`` as a NumPy array, also where it is replicated over the devices of several hosts."""
    return np.asarray(to_host(x))


def _check_batch(batch: Any, step: int) -> None:
    """Refuse a batch in which an array has an empty leading (batch) axis."""
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if is_array(x) and np.ndim(x) >= 1 and np.shape(x)[0] == 0:
            raise ValueError(
                f"`batch_fn` returned an empty batch at step {step}: leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} has shape {np.shape(x)}, so the loss "
                "would be a mean over no samples (NaN). Make `batch_fn` return at least one "
                "sample per step."
            )


class Trainer:
    """A reproducible, resumable training loop for Equinox models with optax.

    Step ``i`` (from 0) draws ``batch_key, loss_key = step_keys(seed, i)``, builds the batch
    ``batch_fn(i, batch_key)``, computes the loss and its gradient with ``loss_key`` and
    applies the optimiser update. With a ``run_dir`` it writes

    - ``config.json``: ``config`` plus the trainer's settings;
    - ``metrics.jsonl``: every ``log_every`` steps one JSON object with ``step`` (steps done),
      ``loss``, every scalar in ``aux`` (e.g. ``nfe``), ``skipped_steps`` (non-finite steps
      skipped so far), ``steps_per_sec`` and ``time``;
    - ``checkpoint.eqx``: model, optimiser state, step and settings every ``checkpoint_every``
      steps and at the end, written atomically with a checksum (:func:`save_checkpoint`); the
      ``keep_checkpoints`` newest are also kept as ``checkpoint-<step>.eqx``.

    ``fit`` resumes from the newest valid checkpoint (unless ``resume=False``), so a killed
    run started again with the same arguments reproduces the uninterrupted run bit for bit.
    A damaged newest checkpoint is reported with a warning and the one before it is used; a
    checkpoint written with another ``seed`` or ``config`` is refused with the differing keys.

    **Guarantees** (``docs/training.md``). A step whose loss or gradient is not finite is
    skipped: parameters and optimiser state stay as they were, a warning names the step, and
    ``skipped_steps`` counts it; ``max_nonfinite_steps`` such steps in a row stop the run
    with :class:`TrainingError`. A runtime error inside the loss (e.g. an ODE solve that
    exhausts ``max_steps`` with ``throw=True``) stops the run with :class:`TrainingError`
    naming the step, the failure and, where they fail on their own, the samples; the state
    before that step is checkpointed first. A non-finite model is never written to a
    checkpoint.

    **Devices.** With a ``mesh`` the batch is sharded over its devices (:func:`shard_batch`)
    and the model and optimiser state are replicated. Each device computes the loss and
    gradient of its shard in a program without cross-device communication, and a second
    program averages them (the loss and floating-point ``aux`` entries are averaged over
    devices, integer ones take their maximum) and updates the parameters. A failure on one
    device therefore raises on the host instead of leaving the others waiting in an
    all-reduce. For a loss that is a mean over the batch this is the single-device step up to
    rounding. On TPU the Trainer requires ``EQX_ON_ERROR=nan`` (see :class:`TrainingError`
    and ``docs/training.md``).

    A tqdm progress bar (if tqdm is installed) shows loss, NFE and steps/s.

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux_dict)``.
        optimizer: an optax gradient transformation.
        batch_fn: ``batch_fn(step, key) -> batch``; must depend only on its arguments (and
            fixed data) for exact resume.
        seed: the run's seed; all randomness of step ``i`` derives from ``(seed, i)``.
        run_dir: output directory (created if needed); ``None`` writes nothing.
        config: JSON-serialisable run configuration, stored in ``config.json`` and in every
            checkpoint; resuming with a different one is refused.
        checkpoint_every: checkpoint period in steps; ``None`` only checkpoints at the end.
        log_every: metrics/progress-bar period in steps (each log synchronises with the
            device, so keep it coarse for fast steps).
        progress: show a progress bar.
        mesh: a device mesh (:func:`make_mesh`) to train data-parallel.
        callbacks: functions ``callback(state, metrics)`` called after every step, with the
            logged metrics dict on logging steps and ``None`` otherwise; return ``True`` to stop
            (a checkpoint is written). An exception in a callback propagates, leaving the last
            checkpoint in place (this is how tests simulate a kill). With ``donate=True`` the
            next step reuses the buffers of ``state``: copy what you keep beyond the call.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        keep_checkpoints: how many checkpoints to keep (the newest ones).
        max_nonfinite_steps: stop after this many consecutive non-finite (skipped) steps.
        donate: update the model and optimiser state in place on the device (buffer
            donation) instead of holding them twice; results are identical either way.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument out of range.
        RuntimeError: training on TPU without ``EQX_ON_ERROR=nan``.

    Example:
        >>> trainer = Trainer(loss_fn, optax.adam(1e-3), batch_fn, seed=0,  # doctest: +SKIP
        ...                   run_dir="runs/demo", checkpoint_every=100)
        >>> state = trainer.fit(model, num_steps=1000)  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: optax.GradientTransformation,
        batch_fn: BatchFn,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        config: dict[str, Any] | None = None,
        checkpoint_every: int | None = 1000,
        log_every: int = 10,
        progress: bool = True,
        mesh: Mesh | None = None,
        callbacks: Sequence[Callable[[TrainState, dict | None], bool | None]] = (),
        has_aux: bool = True,
        keep_checkpoints: int = 3,
        max_nonfinite_steps: int = 10,
        donate: bool = True,
    ):
        owner = "Trainer"
        check_step_args(owner, loss_fn, optimizer)
        check_callable(owner, "batch_fn", batch_fn, "batch_fn(step, key)")
        self.seed = check_int(owner, "seed", seed, minimum=0)
        self.log_every = check_int(owner, "log_every", log_every)
        if checkpoint_every is not None:
            checkpoint_every = check_int(owner, "checkpoint_every", checkpoint_every)
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = check_int(owner, "keep_checkpoints", keep_checkpoints)
        self.max_nonfinite_steps = check_int(owner, "max_nonfinite_steps", max_nonfinite_steps)
        if config is not None:
            check_instance(owner, "config", config, dict, "a dict or None")
        if mesh is not None:
            check_instance(owner, "mesh", mesh, Mesh, "a jax.sharding.Mesh or None")
        has_aux, donate = check_bool(owner, "has_aux", has_aux), check_bool(owner, "donate", donate)
        progress = check_bool(owner, "progress", progress)
        devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
        check_error_mode({d.platform for d in devices})
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.batch_fn = batch_fn
        self.run_dir = None if run_dir is None else pathlib.Path(run_dir)
        self.config = dict(config or {})
        self.progress = progress
        self.mesh = mesh
        self.callbacks = tuple(callbacks)
        self.has_aux = has_aux
        self.donate = donate
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._grads_fn: Callable = grads_jit
        self._update_fn: Callable = update_donating if donate else update_plain

    @property
    def checkpoint_path(self) -> pathlib.Path | None:
        """``run_dir / "checkpoint.eqx"``, or ``None`` without a run directory."""
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_NAME

    def init_state(self, model: PyTree) -> TrainState:
        """A fresh :class:`TrainState` at step 0 for ``model``."""
        opt_state = self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        return TrainState(model=_strong(model), opt_state=_strong(opt_state), step=0)

    def compile(
        self, model: PyTree, batch: Any, *, compiler_options: dict[str, Any] | None = None
    ) -> dict[str, int]:
        """Compile the step's two programs ahead of time for ``batch``'s shapes.

        ``fit`` then uses these executables (so every batch must have these shapes and dtypes)
        and compiles nothing more. Useful to pass XLA ``compiler_options`` or to measure memory
        before training.

        Args:
            model: the model to train (only its structure, shapes and dtypes matter).
            batch: a batch as ``batch_fn`` returns it.
            compiler_options: XLA options for this compilation.

        Returns:
            XLA's memory analysis of the loss-and-gradient program (the one whose memory grows
            with the model and the batch), ``{"temp_bytes", "argument_bytes",
            "output_bytes"}``, or ``{}`` where the backend reports none.
        """
        state = self.init_state(model)
        key = step_keys(self.seed, 0)[1]
        m, opt_state = state.model, state.opt_state
        if self.mesh is not None:
            m, opt_state = replicate((m, opt_state), self.mesh)
            batch = shard_batch(batch, self.mesh)
        args = (self.loss_fn, self.has_aux, self.mesh, m, batch, key)
        grads = grads_jit.lower(*args).compile(compiler_options)
        # The update program takes the gradient program's outputs: zeros of their shapes,
        # placed as they will be (stacked per device under a mesh).
        placement = None
        if self.mesh is not None:
            placement = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names[0]))
        outputs = jax.tree.map(
            lambda s: jax.device_put(jnp.zeros(s.shape, s.dtype), placement),
            eqx.filter_eval_shape(grads_program, *args),
        )
        update_jit = update_donating if self.donate else update_plain
        inputs = (self.optimizer, self.mesh is not None, *outputs)
        self._update_fn = update_jit.lower(inputs, m, opt_state).compile(compiler_options)
        self._grads_fn = grads
        analysis = grads.compiled.memory_analysis()
        if analysis is None:
            return {}
        return {
            "temp_bytes": int(analysis.temp_size_in_bytes),
            "argument_bytes": int(analysis.argument_size_in_bytes),
            "output_bytes": int(analysis.output_size_in_bytes),
        }

    def save(self, state: TrainState) -> None:
        """Write ``state`` to :attr:`checkpoint_path` (process 0 only), keeping older ones.

        Raises:
            TrainingError: the model holds NaN or inf (such a model is never written).
        """
        if self.run_dir is None or jax.process_index() != 0:
            return
        model, opt_state = to_host((state.model, state.opt_state))
        if not _host_all_finite(model):
            raise TrainingError(
                f"refusing to checkpoint a model with NaN or inf parameters at step "
                f"{state.step}; the previous checkpoints in {str(self.run_dir)!r} are kept. "
                "Check the initial model for non-finite values.",
                step=state.step,
            )
        metadata = {
            "step": state.step,
            "seed": self.seed,
            "skipped_steps": self.skipped_steps,
            "config": json_normalise(self.config),
        }
        data = checkpoint_bytes((model, opt_state), metadata)
        write_checkpoint_files(self.run_dir, state.step, data, self.keep_checkpoints)

    def _stored_config(self, metadata: dict[str, Any]) -> dict[str, Any] | None:
        if "config" in metadata:
            return metadata["config"]
        path = self.run_dir / CONFIG_NAME  # checkpoints from before configs were stored
        try:
            return json.loads(path.read_text()).get("config")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None

    def restore(self, like: TrainState) -> TrainState | None:
        """Load the newest valid checkpoint of ``run_dir`` into the structure of ``like``.

        Damaged checkpoints (checksum mismatch, cut short, not a checkpoint) are skipped with a
        warning that names them; the newest valid one is used.

        Returns:
            The restored state, or ``None`` if ``run_dir`` holds no checkpoint.

        Raises:
            CheckpointCorruptError: every checkpoint is damaged.
            ValueError: the checkpoint was written with another ``seed`` or ``config`` (the
                message lists the differing keys), or does not match ``like``.
        """
        if self.run_dir is None or not self.run_dir.is_dir():
            return None
        # checkpoint.eqx first, then the kept ones newest first, until none can be newer
        candidates = [(None, self.run_dir / CHECKPOINT_NAME), *kept_checkpoints(self.run_dir)]
        best, damaged = None, []
        for named_step, path in candidates:
            if best is not None and named_step is not None and named_step <= best[0]:
                break
            if not path.is_file():
                continue
            try:
                metadata, payload = read_checkpoint(path)
            except CheckpointCorruptError as e:
                damaged.append(e)
                continue
            step = int(metadata.get("step", -1))
            if best is None or step > best[0]:
                best = (step, path, metadata, payload)
        if best is None:
            if not damaged:
                return None
            raise CheckpointCorruptError(
                f"no valid checkpoint in {str(self.run_dir)!r}: " + " ".join(map(str, damaged))
            )
        step, path, metadata, payload = best
        for error in damaged:
            warnings.warn(
                f"{error} Resuming from {str(path)!r} (step {step}) instead.",
                RuntimeWarning,
                stacklevel=2,
            )
        changed = []
        if metadata.get("seed") != self.seed:
            changed.append(f"seed: {metadata.get('seed')} -> {self.seed}")
        stored = self._stored_config(metadata)
        if stored is not None:
            changed += changed_settings(stored, self.config)
        if changed:
            raise ValueError(
                f"checkpoint {str(path)!r} was written with other settings; resuming would not "
                "reproduce the run. Changed: " + "; ".join(changed) + ". Use the original "
                "settings, another run_dir, or start over (resume=False; the experiment "
                "scripts: --fresh)."
            )
        model, opt_state = deserialise(path, payload, (like.model, like.opt_state))
        self.skipped_steps = int(metadata.get("skipped_steps", 0))
        return TrainState(model=_strong(model), opt_state=_strong(opt_state), step=step)

    def _write_config(self, num_steps: int) -> None:
        settings = {
            "seed": self.seed,
            "num_steps": num_steps,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every,
            "max_nonfinite_steps": self.max_nonfinite_steps,
            "donate": self.donate,
            "num_devices": 1 if self.mesh is None else int(self.mesh.devices.size),
            "jax_version": jax.__version__,
        }
        text = json.dumps(
            {"config": self.config, "trainer": settings}, indent=2, sort_keys=True, default=repr
        )
        atomic_write(self.run_dir / CONFIG_NAME, lambda f: f.write(text.encode() + b"\n"))

    def _start(self, model: PyTree, num_steps: int, resume: bool) -> TrainState:
        """Fresh or restored state; prepares ``run_dir`` (process 0 writes)."""
        self.skipped_steps = 0
        state = self.init_state(model)
        if self.run_dir is None:
            return state
        is_main = jax.process_index() == 0
        if is_main and self.run_dir.is_dir():
            remove_temp_files(self.run_dir)
            if not resume:
                for path in [self.run_dir / CHECKPOINT_NAME] + [
                    p for _, p in kept_checkpoints(self.run_dir)
                ]:
                    path.unlink(missing_ok=True)
        if resume:
            restored = self.restore(state)
            if restored is not None:
                state = restored
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(self.run_dir / METRICS_NAME, state.step)
            self._write_config(num_steps)
        return state

    def _failing_samples(self, model: PyTree, batch: Any, key: PRNGKeyArray) -> list[int] | None:
        """Indices of the samples of ``batch`` whose loss and gradient fail on their own.

        Each sample is run as a batch of one on a single device. ``None`` if the batch has no
        common leading axis, is large (over 1024), or several processes train together.
        """
        leaves = [x for x in jax.tree.leaves(batch) if is_array(x) and np.ndim(x) >= 1]
        sizes = {np.shape(x)[0] for x in leaves}
        if len(sizes) != 1 or jax.process_count() > 1 or next(iter(sizes)) > 1024:
            return None
        device = jax.devices()[0]
        model = jax.device_put(model, device)
        failing = []
        for i in range(next(iter(sizes))):
            one = jax.tree.map(
                lambda x, i=i: x[i : i + 1] if is_array(x) and np.ndim(x) >= 1 else x, batch
            )
            try:
                out = grads_jit(self.loss_fn, self.has_aux, None, model, one, key)
                jax.block_until_ready(out)
            except RuntimeError:
                failing.append(i)
            except Exception:  # the loss does not accept a batch of one: give up
                return None
        return failing

    def fit(self, model: PyTree, num_steps: int, *, resume: bool = True) -> TrainState:
        """Train ``model`` until ``num_steps`` steps are done in total.

        Args:
            model: the initial model (also the structure template when resuming).
            num_steps: total number of steps of the run (not additional steps).
            resume: continue from the newest valid checkpoint in ``run_dir`` if there is one;
                ``False`` deletes the checkpoints of ``run_dir`` and starts over.

        Returns:
            The final :class:`TrainState`.

        Raises:
            TrainingError: a step failed at run time, or ``max_nonfinite_steps`` consecutive
                steps were not finite. The last good state is checkpointed first.
            ValueError: ``batch_fn`` returned an empty batch, or the checkpoint was written
                with other settings (see :meth:`restore`).
        """
        num_steps = check_int("Trainer.fit", "num_steps", num_steps, minimum=0)
        state = self._start(model, num_steps, resume)
        if state.step >= num_steps:
            return state

        model, opt_state = _copy_arrays((state.model, state.opt_state))
        if self.mesh is not None:
            model, opt_state = replicate((model, opt_state), self.mesh)
        is_main = jax.process_index() == 0
        bar = None
        if self.progress and is_main:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is optional
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=num_steps, initial=state.step, desc="train", dynamic_ncols=True)
        metrics_file = None
        if self.run_dir is not None and is_main:
            metrics_file = open(self.run_dir / METRICS_NAME, "a")

        step = saved_step = state.step
        consecutive = 0
        pending: tuple[int, Array] | None = None  # (step, flag) of the last update in flight

        def settle() -> None:
            """Account for the last dispatched update: was its step finite?"""
            nonlocal pending, consecutive
            if pending is None:
                return
            done, ok = pending
            pending = None
            if bool(_host_value(ok)):
                consecutive = 0
                return
            self.skipped_steps += 1
            consecutive += 1
            warnings.warn(
                f"training step {done}: the loss or a gradient is not finite (NaN or inf); "
                "the step was skipped (parameters and optimiser state "
                f"unchanged; {consecutive} in a row, the run stops at "
                f"{self.max_nonfinite_steps}).",
                RuntimeWarning,
                stacklevel=3,
            )
            if consecutive >= self.max_nonfinite_steps:
                stop(
                    f"training stopped at step {done}: {consecutive} consecutive steps had a "
                    "non-finite loss or gradient and were skipped. Lower the learning "
                    "rate, clip gradients, check the data for NaN/inf, or resume from an "
                    "earlier checkpoint.",
                    done,
                )

        def stop(
            message: str,
            failed_step: int,
            samples: list[int] | None = None,
            cause: BaseException | None = None,
        ) -> None:
            """Checkpoint the last good state, then raise TrainingError."""
            nonlocal saved_step
            good = TrainState(model=model, opt_state=opt_state, step=step)
            if self.run_dir is not None and saved_step != step:
                self.save(good)
                saved_step = step
            where = ""
            if self.checkpoint_path is not None and self.checkpoint_path.is_file():
                where = (
                    f" The last good state (step {saved_step}) is in "
                    f"{str(self.checkpoint_path)!r}; running again resumes from it."
                )
            raise TrainingError(
                message + where,
                step=failed_step,
                samples=samples,
                checkpoint=self.checkpoint_path if where else None,
            ) from cause

        t_start = t_last = time.perf_counter()
        step_last = step
        try:
            while step < num_steps:
                batch_key, loss_key = step_keys(self.seed, step)
                host_batch = self.batch_fn(step, batch_key)
                _check_batch(host_batch, step)
                batch = host_batch if self.mesh is None else shard_batch(host_batch, self.mesh)
                try:
                    grads_out = self._grads_fn(
                        self.loss_fn, self.has_aux, self.mesh, model, batch, loss_key
                    )
                    jax.block_until_ready(grads_out)
                except RuntimeError as error:
                    settle()
                    samples = self._failing_samples(model, host_batch, loss_key)
                    located = ""
                    if samples:
                        located = f" It fails for sample(s) {samples} of the step's batch."
                    elif samples == []:
                        located = " No sample of the step's batch fails on its own."
                    stop(
                        f"training step {step + 1} failed: {error_message(error)}{located}",
                        step + 1,
                        samples,
                        cause=error,
                    )
                settle()
                model, opt_state, loss, aux, ok = self._update_fn(
                    (self.optimizer, self.mesh is not None, *grads_out), model, opt_state
                )
                step += 1
                pending = (step, ok)
                state = TrainState(model=model, opt_state=opt_state, step=step)

                metrics = None
                if step % self.log_every == 0 or step == num_steps:
                    settle()
                    loss_value = float(_host_value(loss))
                    now = time.perf_counter()
                    rate = (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    metrics = {"step": step, "loss": loss_value, **_scalar_metrics(aux)}
                    metrics["skipped_steps"] = self.skipped_steps
                    metrics["steps_per_sec"] = rate
                    metrics["time"] = now - t_start
                    self.history.append(metrics)
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(metrics) + "\n")
                        metrics_file.flush()
                    if bar is not None:
                        postfix = {"loss": f"{loss_value:.4g}"}
                        if "nfe" in metrics:
                            postfix["nfe"] = f"{metrics['nfe']:.4g}"
                        postfix["steps/s"] = f"{rate:.3g}"
                        if self.skipped_steps:
                            postfix["skipped"] = str(self.skipped_steps)
                        bar.set_postfix(postfix, refresh=False)
                if bar is not None:
                    bar.update(1)

                halt = any([bool(cb(state, metrics)) for cb in self.callbacks])
                periodic = self.checkpoint_every is not None and step % self.checkpoint_every == 0
                if periodic or halt or step == num_steps:
                    settle()
                    self.save(state)
                    saved_step = step
                if halt:
                    break
            settle()
        finally:
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                metrics_file.close()
        return state


def fit(
    model: PyTree,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    batch_fn: BatchFn,
    num_steps: int,
    **trainer_kwargs: Any,
) -> TrainState:
    """Shortcut for ``Trainer(loss_fn, optimizer, batch_fn, **trainer_kwargs).fit(model,
    num_steps)``; see :class:`Trainer` for the keyword arguments.

    Example:
        >>> state = fit(model, loss_fn, optax.adam(1e-2), batch_fn, 5)  # doctest: +SKIP
        >>> state.step  # doctest: +SKIP
        5
    """
    resume = trainer_kwargs.pop("resume", True)
    trainer = Trainer(loss_fn, optimizer, batch_fn, **trainer_kwargs)
    return trainer.fit(model, num_steps, resume=resume)
