"""The public ``odeint``: validation at the boundary, one cached compilation, dispatch.

``odeint`` checks its arguments in Python (cheap, and with messages that name the argument),
then calls one ``eqx.filter_jit``-compiled function: an eager call compiles once per static
configuration (the vector field, the solver and options, shapes and dtypes) and reuses the
compiled program afterwards; inside a user's ``jit`` it is simply inlined.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import weakref
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._adjoint import AbstractAdjoint, CheckpointAdjoint
from ._controller import PIController
from ._derivatives import solve
from ._event import Event
from ._fixed import fixed_substeps, integrate_fixed
from ._forward import NUM_STATS, Primal, Problem, SolveConfig
from ._integrate import time_dtype
from ._solution import RESULT_MESSAGES, Result, Solution
from ._solvers import AbstractSolver, Tsit5

_DEFAULT_SOLVER = Tsit5()
_DEFAULT_CONTROLLER = PIController()
_DEFAULT_ADJOINT = CheckpointAdjoint()


def _describe(value, name: str) -> str:
    """``repr`` of a bad option, with a hint when a class was passed instead of an instance."""
    if isinstance(value, type):
        return (
            f"the class {value.__name__} itself; pass an instance, "
            f"{name}=nde.{value.__name__}()"
        )
    return repr(value)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_tolerance(name: str, value, dtype):
    """A scalar tolerance as an array of the state dtype (NumPy for concrete values: no
    device work per eager call)."""
    arr = value if isinstance(value, jax.core.Tracer | jax.Array) else np.asarray(value)
    if np.ndim(arr) != 0:
        raise ValueError(f"odeint: `{name}` must be a scalar, got shape {np.shape(arr)}.")
    kind = jnp.result_type(arr)
    if not (jnp.issubdtype(kind, jnp.floating) or jnp.issubdtype(kind, jnp.integer)):
        raise TypeError(f"odeint: `{name}` must be a real number, got dtype {kind}.")
    if _is_concrete(value) and not float(np.asarray(value)) > 0:
        raise ValueError(
            f"odeint: `{name}` must be positive, got {float(np.asarray(value))!r}. "
            "Typical values are rtol=1e-6, atol=1e-6 (or 1e-3 for training)."
        )
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _prepare_y0(y0):
    leaves, treedef = jax.tree.flatten(y0)
    if not leaves:
        raise ValueError("odeint: `y0` has no array leaves; pass an array or a pytree of arrays.")
    out = []
    for leaf in leaves:
        arr = leaf if isinstance(leaf, jax.Array | jax.core.Tracer) else jnp.asarray(leaf)
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError(
                "odeint: `y0` has a complex leaf; complex states are not supported. Split it "
                "into real and imaginary parts (e.g. a pytree {'re': y.real, 'im': y.imag})."
            )
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            if jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_:
                # Promote (never truncate): integers become the default float dtype.
                arr = arr.astype(jnp.result_type(float))
            else:
                raise TypeError(f"odeint: `y0` leaf has unsupported dtype {arr.dtype}.")
        if getattr(arr, "weak_type", False):  # e.g. jnp.full(..., 0.0): compile once, not twice
            arr = arr.astype(arr.dtype)
        out.append(arr)
    return jax.tree.unflatten(treedef, out)


def _check_signature(fn, what: str) -> None:
    """A clear error for a callable that cannot be called as ``fn(t, y, args)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables: checked by the call
        return
    try:
        sig.bind(0.0, None, None)
    except TypeError:
        raise TypeError(
            f"odeint: {what} must take three positional arguments (t, y, args), got a callable "
            f"with signature {sig}. Write it as `def f(t, y, args)` (or "
            "`lambda t, y, args: ...`) and ignore `args` if it is unused."
        ) from None


def _check_f_output(f, t0, y0, args):
    _check_signature(f, "`f`")
    try:
        out = eqx.filter_eval_shape(f, t0, y0, args)
    except Exception as err:
        err.add_note("(raised by neuralode.odeint while calling f(t, y0, args) to check it)")
        raise
    y_struct = jax.tree.structure(y0)
    out_struct = jax.tree.structure(out)
    if y_struct != out_struct:
        raise ValueError(
            "odeint: `f(t, y, args)` must return a pytree with the same structure as `y0`; "
            f"got {out_struct} for y0 structure {y_struct}."
        )
    y_leaves = jax.tree_util.tree_leaves_with_path(y0)
    for (path, y_leaf), out_leaf in zip(y_leaves, jax.tree.leaves(out), strict=True):
        where = jax.tree_util.keystr(path) or "y"
        if tuple(out_leaf.shape) != tuple(y_leaf.shape):
            raise ValueError(
                f"odeint: `f` returned shape {tuple(out_leaf.shape)} for {where} but `y0` has "
                f"shape {tuple(y_leaf.shape)}; dy/dt must have the shape of y."
            )
        if out_leaf.dtype != y_leaf.dtype:
            raise ValueError(
                f"odeint: `f` returned dtype {out_leaf.dtype} for {where} but `y0` has dtype "
                f"{y_leaf.dtype}; cast the output of `f` (or `y0`) so that they agree."
            )


def _check_ts(ts, dtype):
    arr = ts if isinstance(ts, jax.Array | jax.core.Tracer) else np.asarray(ts)
    if arr.ndim != 1:
        raise ValueError(
            f"odeint: `ts` must be a 1-D array of output times, got shape {arr.shape}."
        )
    if arr.shape[0] < 1:
        raise ValueError("odeint: `ts` must contain at least one time.")
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"odeint: `ts` must hold real numbers, got dtype {arr.dtype}.")
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _check_resolution(rtol: float, dtype) -> None:
    """A relative tolerance finer than the state's dtype can represent cannot be met."""
    eps = float(jnp.finfo(dtype).eps)
    if rtol < eps:
        sensible = float(f"{10 * eps:.0e}")
        name = jnp.dtype(dtype).name
        wider = (
            "float64 states (jax.config.update('jax_enable_x64', True) and "
            "y0.astype(jnp.float64))" if name == "float32" else "y0.astype(jnp.float32)"
        )
        raise ValueError(
            f"odeint: `rtol`={rtol:g} is below the resolution of the state's dtype {name} "
            f"(machine epsilon {eps:.1e}), so no step could meet it. Use rtol >= {sensible:g} "
            f"with {name} states, or {wider}."
        )


_TS_MESSAGE = (
    "odeint: `ts` must be strictly increasing or strictly decreasing (no repeated times, "
    "no change of direction, all finite)."
)


def _monotonic(ts_np: np.ndarray) -> bool:
    if ts_np.shape[0] < 2:
        return bool(np.all(np.isfinite(ts_np)))
    d = np.diff(ts_np)
    return bool(np.all(np.isfinite(ts_np)) and (np.all(d > 0) or np.all(d < 0)))


class _Ref:
    """Identity of a concrete array, held weakly (a compilation-cache key component)."""

    __slots__ = ("_ref", "_id")

    def __init__(self, obj):
        self._ref = weakref.ref(obj)
        self._id = id(obj)

    def __hash__(self):
        return self._id

    def __eq__(self, other):
        obj = self._ref()
        return isinstance(other, _Ref) and obj is not None and other._ref() is obj


def _is_concrete_array(x) -> bool:
    return isinstance(x, np.ndarray) or (isinstance(x, jax.Array) and _is_concrete(x))


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions and lambdas
            names |= _code_names(const)
    return names


def _captured_arrays(obj, depth: int, found: dict) -> None:
    """Collect the concrete arrays a function reads from its closure, defaults and globals
    (following functions, methods and partials it references, ``depth`` levels deep)."""
    if depth < 0:
        return
    if isinstance(obj, functools.partial):
        for item in (obj.func, *obj.args, *obj.keywords.values()):
            _captured_arrays(item, depth, found)
        return
    if isinstance(obj, types.MethodType):
        _captured_arrays(obj.__func__, depth, found)
        return
    if isinstance(obj, eqx.Module):  # its arrays are traced; its methods may read globals
        _captured_arrays(type(obj).__call__, depth, found)
        return
    if not isinstance(obj, types.FunctionType):
        return
    values = list(obj.__defaults__ or ())
    for cell in obj.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    values += [obj.__globals__[n] for n in _code_names(obj.__code__) if n in obj.__globals__]
    for value in values:
        if _is_concrete_array(value):
            found[id(value)] = value
        elif isinstance(value, types.FunctionType | types.MethodType | functools.partial):
            _captured_arrays(value, depth - 1, found)
        elif isinstance(value, eqx.Module | list | tuple | dict):
            for leaf in jax.tree.leaves(value):
                if _is_concrete_array(leaf):
                    found[id(leaf)] = leaf
                elif isinstance(leaf, types.FunctionType | functools.partial):
                    _captured_arrays(leaf, depth - 1, found)


def _fingerprint(f) -> tuple[_Ref, ...]:
    """The arrays ``f`` captures, by identity: compiled programs are reused only while ``f``
    sees the very same arrays (a global or closed-over array reassigned between two eager
    calls compiles anew instead of silently reusing the old values)."""
    found: dict = {}
    _captured_arrays(f, 2, found)
    refs = []
    for value in found.values():
        try:
            refs.append(_Ref(value))
        except TypeError:  # not weak-referenceable: cannot be tracked
            continue
    return tuple(refs)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything about a call that is compiled in (hashable: the compilation cache key)."""

    solver: AbstractSolver
    controller: PIController
    adjoint: AbstractAdjoint
    max_steps: int
    throw: bool
    has_dt0: bool
    num_sub: int | None  # fixed-step solvers: sub-steps per output interval
    check_ts: bool  # check monotonic ts at run time (it was traced when odeint was called)
    captured: tuple = ()  # identities of the arrays f captures (see _fingerprint)


def _flat_field(f, y0, ts, args, events=()):
    """``(fn, cond, y_flat, diff, nondiff, unravel)``: the field (and the event functions) on
    flat arrays, and their array inputs.

    The array leaves of ``f`` (an ``eqx.Module``), of ``args``, of the events' ``cond_fn`` and
    the arrays they close over that an outer transformation traces become explicit inputs:
    floating ones are differentiated (``diff``), the others (integer arrays) are not
    (``nondiff``). All other leaves (functions, strings, Python numbers, ``None``) are compiled
    in. ``cond`` is ``None`` without events.
    """
    y_flat, unravel = ravel_pytree(y0)
    dtype = y_flat.dtype
    t0 = ts[0].astype(dtype)
    f_dyn, f_static = eqx.partition(f, eqx.is_array)
    a_dyn, a_static = eqx.partition(args, eqx.is_array)
    e_dyn, e_static = eqx.partition(tuple(ev.cond_fn for ev in events), eqx.is_array)

    def fn_tree(t, y, f_dyn, a_dyn):
        return eqx.combine(f_dyn, f_static)(t, y, eqx.combine(a_dyn, a_static))

    def cond_tree(t, y, e_dyn, a_dyn):
        conds = eqx.combine(e_dyn, e_static)
        a = eqx.combine(a_dyn, a_static)
        return jnp.stack([jnp.asarray(c(t, y, a)).astype(dtype) for c in conds])

    converted, consts = jax.closure_convert(fn_tree, t0, y0, f_dyn, a_dyn)
    cond_conv, cond_consts = (None, ())
    if events:
        cond_conv, cond_consts = jax.closure_convert(cond_tree, t0, y0, e_dyn, a_dyn)
    diff, nondiff = eqx.partition(
        (f_dyn, a_dyn, tuple(consts), e_dyn, tuple(cond_consts)), eqx.is_inexact_array
    )

    def fn(t, y, diff, nondiff):
        # f sees time in the state's dtype (integration keeps its own time in >= float32).
        fd, ad, c, _, _ = eqx.combine(diff, nondiff)
        out = converted(jnp.asarray(t).astype(dtype), unravel(y), fd, ad, *c)
        return ravel_pytree(out)[0].astype(dtype)

    def cond(t, y, diff, nondiff):
        _, ad, _, ed, cc = eqx.combine(diff, nondiff)
        return cond_conv(jnp.asarray(t).astype(dtype), unravel(y), ed, ad, *cc)

    return fn, (cond if events else None), y_flat, diff, nondiff, unravel


def _as_events(event) -> tuple[Event, ...]:
    if event is None:
        return ()
    events = (event,) if isinstance(event, Event) else event
    if not isinstance(events, tuple | list) or not events or not all(
        isinstance(ev, Event) for ev in events
    ):
        raise TypeError(
            "odeint: `event` must be an nde.Event or a non-empty tuple of them, got "
            f"{_describe(event, 'event')}."
        )
    return tuple(events)


def _check_events(events, t0, y0, args):
    for i, ev in enumerate(events):
        _check_signature(ev.cond_fn, f"event {i}'s `cond_fn`")
        try:
            out = eqx.filter_eval_shape(ev.cond_fn, t0, y0, args)
        except Exception as err:
            err.add_note(f"(raised by neuralode.odeint while calling event {i}'s "
                         "cond_fn(t, y0, args) to check it)")
            raise
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()
                and jnp.issubdtype(out.dtype, jnp.floating)):
            raise ValueError(
                f"odeint: event {i}'s `cond_fn(t, y, args)` must return a floating scalar, got "
                f"{out}."
            )


# Eager calls reuse compiled programs; the cache is bounded: every compiled program pins
# executable memory (hundreds of memory mappings on CPU), and a notebook that calls odeint with
# a fresh lambda each time would otherwise accumulate them until the process runs out.
_MAX_EAGER_PROGRAMS = 64


class _EagerCache:
    compiled: Callable | None = None
    traces = 0


def _compiled():
    if _EagerCache.compiled is None or _EagerCache.traces >= _MAX_EAGER_PROGRAMS:
        _EagerCache.compiled = eqx.filter_jit(_odeint_compiled)
        _EagerCache.traces = 0
    return _EagerCache.compiled


def _odeint_compiled(f, y0, ts, args, rtol, atol, dt0, probe, events, static: _Static):
    _EagerCache.traces += 1  # runs once per trace (compilation), not per call
    t0 = ts[0].astype(jnp.result_type(*jax.tree.leaves(y0)))
    _check_f_output(f, t0, y0, args)
    _check_events(events, t0, y0, args)
    if static.check_ts:
        d = jnp.diff(ts)
        bad = ~(jnp.all(d > 0) | jnp.all(d < 0)) | ~jnp.all(jnp.isfinite(ts))
        ts = eqx.error_if(ts, bad, _TS_MESSAGE)
        bad_tol = ~(rtol > 0) | ~(atol > 0)
        rtol = eqx.error_if(
            rtol, bad_tol,
            "odeint: `rtol` and `atol` must be positive; a traced value was zero, negative or "
            "NaN.",
        )
    fn, cond, y_flat, diff, nondiff, unravel = _flat_field(f, y0, ts, args, events)
    event_out = {}
    if static.solver.adaptive:
        cfg = SolveConfig(
            static.solver, static.controller, static.max_steps, static.throw, static.has_dt0,
            static.adjoint,
            event_directions=tuple(0 if ev.direction is None else ev.direction for ev in events),
            event_terminal=tuple(ev.terminal for ev in events),
        )
        problem = Problem(fn, cond, cfg, nondiff, rtol, atol, dt0)
        ys_flat, stats, result, ev = solve(problem, Primal(y_flat, ts, diff, probe))
        if ev is not None:
            event_out = {"event_time": ev.time, "event_y": unravel(ev.y),
                         "event_index": ev.index}
    else:
        ys_flat, nfe = integrate_fixed(
            lambda t, y, p: fn(t, y, *p), y_flat, ts, (diff, nondiff),
            tab=static.solver.tableau, num_sub=static.num_sub,
        )
        n_steps = jnp.asarray(static.num_sub * (ts.shape[0] - 1), jnp.int32)
        zero = jnp.zeros((), jnp.int32)
        stats = {"num_steps": n_steps, "num_accepted": n_steps, "num_rejected": zero,
                 "nfe": jnp.asarray(nfe, jnp.int32), "njev": zero, "nlinsolve": zero}
        finite = jnp.all(jnp.isfinite(ys_flat))
        result = jnp.where(finite, Result.successful, Result.nonfinite).astype(jnp.int32)
        if static.throw:
            ys_flat = eqx.error_if(
                ys_flat, jax.lax.stop_gradient(~finite), RESULT_MESSAGES[Result.nonfinite]
            )
    ys = jax.vmap(unravel)(ys_flat)
    return Solution(ts=ts, ys=ys, stats=stats, result=result, **event_out)


def odeint(
    f: Callable[..., PyTree],
    y0: PyTree[ArrayLike],
    ts: Float[ArrayLike, " times"],
    args: PyTree = None,
    *,
    solver: AbstractSolver = _DEFAULT_SOLVER,
    rtol: float | Float[Array, ""] = 1e-6,
    atol: float | Float[Array, ""] = 1e-6,
    dt0: float | Float[Array, ""] | None = None,
    max_steps: int = 4096,
    controller: PIController = _DEFAULT_CONTROLLER,
    adjoint: AbstractAdjoint = _DEFAULT_ADJOINT,
    throw: bool = True,
    stats_probe: Float[Array, "4"] | None = None,
    event: Event | Sequence[Event] | None = None,
) -> Solution:
    """Solve the initial value problem ``dy/dt = f(t, y, args)``, ``y(ts[0]) = y0``.

    Args:
        f: The vector field ``f(t, y, args) -> dy/dt`` with ``dy/dt`` of the same pytree
            structure, shapes and dtypes as ``y``. It may be a pytree itself (an
            ``eqx.Module``): its array leaves are differentiated, as are arrays it closes over.
        y0: Initial state: an array or any pytree of floating arrays. Integer leaves are
            promoted to the default float dtype.
        ts: 1-D array of output times, strictly increasing or strictly decreasing. Integration
            runs from ``ts[0]`` to ``ts[-1]``; outputs come from the solver's dense
            interpolant (steps are not clipped to output times). Traced: new values never
            recompile.
        args: Any pytree passed to ``f``: its array leaves are traced and differentiated
            (floating ones), every other leaf (functions, strings, Python numbers, ``None``,
            an Equinox module's static parts) is held static, as ``eqx.filter_jit`` does.
        solver: A solver instance: adaptive ``Tsit5()`` (default), ``Dopri5()``,
            ``Dopri8()``, ``Bosh3()``; fixed-step ``Euler()``, ``Midpoint()``, ``Heun()``,
            ``RK4()`` (these need ``dt0``).
        rtol, atol: Relative and absolute tolerances of the RMS error norm
            ``atol + rtol·max(|y0|, |y1|)`` (adaptive solvers). Traced.
        dt0: Adaptive solvers: the first step size (default: chosen automatically, Hairer's
            algorithm). Fixed-step solvers: the largest step; each output interval is split
            into ``ceil(max|Δts| / dt0)`` equal steps, so ``ts`` must then be concrete.
        max_steps: Maximum number of steps (accepted and rejected) of an adaptive solve.
        controller: :class:`PIController` settings (PI coefficients, factor limits,
            ``dtmin``/``dtmax``).
        adjoint: Gradient mode of adaptive solves: :class:`CheckpointAdjoint` (default: the
            exact gradient of the discrete solve, bounded memory), :class:`BacksolveAdjoint`
            (the paper's adjoint, memory independent of the steps),
            :class:`InterpolatedAdjoint`, or :class:`ForwardMode`. Every mode supports
            ``jax.jvp``/``jax.jacfwd``, ``jax.grad`` and second derivatives
            (``grad(grad)``, ``jvp(grad)``, ``jax.hessian``). Fixed-step solvers are always
            differentiated by plain autodiff through ``lax.scan``.
        throw: If ``True`` (default) a failed solve raises a runtime error that says what
            happened and what to try. If ``False``, check ``sol.result``: outputs not reached
            are NaN, and a loss that masks failed samples out (``jnp.where(sol.result == 0,
            ..., 0)``) has finite gradients.
        stats_probe: Optional float array of shape ``(4,)`` (zeros). The gradient with
            respect to it is the backward solve's ``[num_steps, num_accepted, num_rejected,
            nfe]``, which makes NFE-B available under ``jit`` without side effects.
        event: An :class:`Event` or a tuple of them (adaptive solvers): the solve stops where
            an event function crosses zero (``terminal=True``), located on the dense output;
            ``sol.event_time``, ``sol.event_y`` and ``sol.event_index`` say when, where and
            which, and are differentiable (implicit function theorem) in every gradient mode.

    Returns:
        A :class:`Solution` with ``ts``, ``ys``, ``stats`` and ``result`` (and the event
        fields with ``event=``).

    Example:
        ```python
        import jax.numpy as jnp
        import neuralode as nde

        def f(t, y, args):
            return -args * y

        sol = nde.odeint(f, jnp.array([1.0, 2.0]), jnp.linspace(0.0, 1.0, 5), 0.5)
        sol.ys.shape  # (5, 2)
        sol.stats["nfe"]
        ```
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"odeint: `solver` must be a solver instance such as nde.Tsit5(), got "
            f"{_describe(solver, 'solver')}. "
            "Available: Euler, Midpoint, Heun, RK4, Bosh3, Dopri5, Tsit5, Dopri8."
        )
    if not isinstance(controller, PIController):
        raise TypeError(
            "odeint: `controller` must be a nde.PIController instance, got "
            f"{_describe(controller, 'controller')}."
        )
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            "odeint: `adjoint` must be nde.CheckpointAdjoint(), nde.BacksolveAdjoint(), "
            "nde.InterpolatedAdjoint() or nde.ForwardMode(), got "
            f"{_describe(adjoint, 'adjoint')}."
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) or max_steps < 1:
        raise ValueError(f"odeint: `max_steps` must be a positive int, got {max_steps!r}.")
    if not isinstance(throw, bool):
        raise TypeError(f"odeint: `throw` must be True or False, got {throw!r}.")
    if not callable(f):
        raise TypeError(f"odeint: `f` must be callable as f(t, y, args), got {type(f).__name__}.")
    events = _as_events(event)
    if events and not solver.adaptive:
        raise ValueError(
            f"odeint: `event` needs an adaptive solver (events are located on the dense "
            f"output), got {solver!r}."
        )

    y0 = _prepare_y0(y0)
    state_dtype = jnp.result_type(*jax.tree.leaves(y0))
    dtype = time_dtype(state_dtype)  # times and tolerances: at least float32
    # Concrete (non-traced) output times are checked on the host.
    ts_static = None if isinstance(ts, jax.core.Tracer) else np.asarray(ts)
    ts = _check_ts(ts, dtype)
    rtol = _check_tolerance("rtol", rtol, dtype)
    atol = _check_tolerance("atol", atol, dtype)
    if solver.adaptive and _is_concrete(rtol):
        _check_resolution(float(np.asarray(rtol)), state_dtype)
    if ts_static is not None and not _monotonic(ts_static.astype(np.float64)):
        raise ValueError(_TS_MESSAGE + f" Got ts={ts_static!r}.")
    check_ts = ts_static is None or not (_is_concrete(rtol) and _is_concrete(atol))

    num_sub = None
    if solver.adaptive:
        probe = np.zeros((NUM_STATS,), dtype) if stats_probe is None else stats_probe
        if np.shape(probe) != (NUM_STATS,):
            raise ValueError(
                f"odeint: `stats_probe` must have shape (4,), got {np.shape(probe)}."
            )
        if dt0 is not None:
            if np.ndim(dt0) != 0:
                raise ValueError(f"odeint: `dt0` must be a scalar, got shape {np.shape(dt0)}.")
            if _is_concrete(dt0) and not float(np.asarray(dt0)) != 0:
                raise ValueError("odeint: `dt0` must be non-zero.")
            if isinstance(dt0, jax.core.Tracer | jax.Array):
                dt0_arr = dt0 if dt0.dtype == dtype else dt0.astype(dtype)
            else:
                dt0_arr = np.asarray(dt0, dtype)
        else:
            dt0_arr = np.zeros((), dtype)
    else:
        if dt0 is None:
            raise ValueError(
                f"odeint: the fixed-step solver {solver!r} needs `dt0` (the largest step size)."
            )
        if ts_static is None or not _is_concrete(dt0):
            raise ValueError(
                f"odeint: the fixed-step solver {solver!r} needs concrete (non-traced) `ts` and "
                "`dt0`, because the number of steps is part of the compiled program. Pass them "
                "as static values, e.g. close over them instead of passing them into jit."
            )
        if not float(np.asarray(dt0)) != 0:
            raise ValueError("odeint: `dt0` must be non-zero.")
        num_sub = fixed_substeps(ts_static, dt0)
        probe = np.zeros((NUM_STATS,), dtype)
        dt0_arr = np.asarray(dt0, dtype)

    static = _Static(
        solver=solver,
        controller=controller,
        adjoint=adjoint,
        max_steps=int(max_steps),
        throw=throw,
        has_dt0=dt0 is not None,
        num_sub=num_sub,
        check_ts=check_ts,
        captured=_fingerprint(f),
    )
    return _compiled()(f, y0, ts, args, rtol, atol, dt0_arr, probe, events, static)
