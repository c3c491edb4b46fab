"""Events: stop where a condition crosses zero, and the time it happened, differentiably.

:class:`Event` is the public option. Inside a solve an event is a scalar function
``g(t, y)`` of real time and state; the integrator evaluates it at the end of every accepted
step and, where its sign changes in the event's direction, locates the zero on the step's dense
interpolant with a bracketing root finder (Illinois' modified regula falsi, to near machine
precision, without evaluating the vector field).

The event time ``t*`` solves ``g(t*, y(t*; θ); θ) = 0``, so by the implicit function theorem

    dt*/dθ = -(∂g/∂y · ∂y/∂θ|_{t*} + ∂g/∂θ) / (∂g/∂t + ∂g/∂y · f(t*, y*)),

and the state at the event moves with it: ``dy*/dθ = ∂y/∂θ|_{t*} + f(t*, y*) dt*/dθ``. The
forward sensitivity applies this to the tangent of the state at the (fixed) event time; the
adjoints apply its transpose, which turns the cotangents of ``t*`` and ``y*`` into a cotangent
of the state at the fixed time ``t*`` (an extra output) and a direct one of ``g``'s
parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

# Iterations of the root finder: the bracket shrinks at least superlinearly with Illinois'
# rule, so 50 reach the resolution of float64 with room to spare; it stops earlier when the
# bracket no longer changes.
_ROOT_ITERATIONS = 50


class Event(eqx.Module):
    """Stop (or mark) the solve where ``cond_fn(t, y, args)`` crosses zero.

    Args:
        cond_fn: ``cond_fn(t, y, args) -> scalar``, the event function, called with the same
            ``args`` as the vector field. It may be an ``eqx.Module``: its arrays are
            differentiated (a learnable event function).
        direction: ``+1``: only rising crossings (negative to non-negative) count; ``-1``:
            only falling ones; ``None`` (default): both. A zero exactly at the start counts only
            if the function then crosses in the event's direction, so a solve restarted on the
            event surface (a bounce) does not stop at once.
        terminal: ``True`` (default): the solve stops at the event; outputs after it are NaN
            (not reached) and ``sol.result`` is ``Result.event``. ``False``: the first occurrence
            is recorded (``event_time``, ``event_y``) and the solve goes on.

    Example:
        ```python
        import jax.numpy as jnp
        import neuralode as nde

        def fall(t, y, args):              # y = (height, velocity)
            return jnp.stack([y[1], -9.81])

        ground = nde.Event(lambda t, y, args: y[0], direction=-1)
        sol = nde.odeint(fall, jnp.array([1.0, 0.0]), jnp.linspace(0.0, 1.0, 5), event=ground)
        sol.event_time     # sqrt(2 / 9.81) = 0.4515...
        ```
    """

    cond_fn: Callable[..., Any]
    direction: int | None = eqx.field(static=True, default=None)
    terminal: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not callable(self.cond_fn):
            raise TypeError(
                "Event: `cond_fn` must be callable as cond_fn(t, y, args) -> scalar, got "
                f"{type(self.cond_fn).__name__}."
            )
        if self.direction not in (None, 1, -1) or isinstance(self.direction, bool):
            raise ValueError(
                f"Event: `direction` must be +1, -1 or None, got {self.direction!r}."
            )
        if not isinstance(self.terminal, bool):
            raise TypeError(f"Event: `terminal` must be True or False, got {self.terminal!r}.")


def crossings(g0, g1, directions):
    """Which events' functions change sign from ``g0`` to ``g1`` in their direction.

    ``directions`` holds ``+1``, ``-1`` or ``0`` (both) per event. A zero at the start of the
    step does not count (``g0 = 0`` is neither side), a zero at its end does.
    """
    rising = (g0 < 0) & (g1 >= 0)
    falling = (g0 > 0) & (g1 <= 0)
    d = jnp.asarray(directions)
    return jnp.where(d > 0, rising, jnp.where(d < 0, falling, rising | falling))


def locate(phi: Callable, g0, g1, active):
    """Zeros ``θ`` in ``(0, 1]`` of the vector function ``phi(θ)`` (one component per event),
    bracketed by ``phi(0) = g0`` and ``phi(1) = g1`` where ``active``.

    Illinois' modified regula falsi, vectorised over the events, in a ``while_loop`` that runs
    only as long as some bracket still shrinks (zero iterations on steps without events, also
    under ``vmap``). Returns ``θ`` (1 where inactive).
    """
    dtype = jnp.result_type(g0, jnp.float32)
    lo = jnp.zeros_like(g0, dtype)
    hi = jnp.ones_like(g0, dtype)
    f_lo, f_hi = g0.astype(dtype), g1.astype(dtype)
    # Where the end value is exactly zero the root is the end itself.
    done0 = ~active | (f_hi == 0)

    def cond(c):
        it, _, _, _, _, _, _, done = c
        return (it < _ROOT_ITERATIONS) & ~jnp.all(done)

    def body(c):
        it, lo, hi, f_lo, f_hi, side, _, done = c
        denom = f_hi - f_lo
        x = jnp.where(denom != 0, (lo * f_hi - hi * f_lo) / jnp.where(denom != 0, denom, 1), lo)
        x = jnp.clip(x, lo, hi)
        # Guard against stagnation: fall back to bisection when the secant lands on an end.
        x = jnp.where((x <= lo) | (x >= hi), 0.5 * (lo + hi), x)
        fx = phi(x).astype(dtype)
        left = jnp.sign(fx) == jnp.sign(f_lo)  # the root is in [x, hi]
        # Illinois: halve the value kept at the end that stays twice in a row.
        new_lo = jnp.where(left, x, lo)
        new_hi = jnp.where(left, hi, x)
        new_flo = jnp.where(left, fx, jnp.where(side == -1, 0.5 * f_lo, f_lo))
        new_fhi = jnp.where(left, jnp.where(side == 1, 0.5 * f_hi, f_hi), fx)
        new_side = jnp.where(left, 1, -1)
        converged = (fx == 0) | (new_hi - new_lo <= 4 * jnp.finfo(dtype).eps * new_hi)
        # Keep finished components as they are.
        keep = done
        lo = jnp.where(keep, lo, jnp.where(fx == 0, x, new_lo))
        hi = jnp.where(keep, hi, jnp.where(fx == 0, x, new_hi))
        f_lo = jnp.where(keep, f_lo, new_flo)
        f_hi = jnp.where(keep, f_hi, new_fhi)
        side = jnp.where(keep, side, new_side)
        return it + 1, lo, hi, f_lo, f_hi, side, x, done | converged

    side0 = jnp.zeros(g0.shape, jnp.int32)
    init = (jnp.zeros((), jnp.int32), lo, hi, f_lo, f_hi, side0, hi, done0)
    _, lo, hi, _, _, _, _, _ = lax.while_loop(cond, body, init)
    return jnp.where(active, hi, 1.0)


def ift_tangent(g_of, t_star, y_star, f_star, y_dot, params, params_dot):
    """Tangents ``(ṫ*, ẏ*)`` of the event time and state.

    ``g_of(t, y, params)`` is the firing event's function, ``y_dot`` the tangent of the state
    at the fixed time ``t*``, ``params_dot`` the tangent of the differentiable parameters.
    """
    # ∂g/∂t + ∂g/∂y · f in one forward-mode product along (1, f).
    _, denom = jax.jvp(lambda t, y: g_of(t, y, params), (t_star, y_star),
                       (jnp.ones_like(t_star), f_star))
    _, num = jax.jvp(lambda y, p: g_of(t_star, y, p), (y_star, params), (y_dot, params_dot))
    t_dot = -num / denom
    return t_dot, y_dot + f_star * t_dot


def ift_cotangent(g_of, t_star, y_star, f_star, params, ct_t, ct_y):
    """The transpose of :func:`ift_tangent`: ``(c_y, c_params)``, the cotangent of the state at
    the fixed time ``t*`` and the direct cotangent of ``g``'s parameters."""
    g_t = jax.grad(lambda t: g_of(t, y_star, params))(t_star)
    g_val, vjp = jax.vjp(lambda y, p: g_of(t_star, y, p), y_star, params)
    g_y, _ = vjp(jnp.ones_like(g_val))
    denom = g_t + jnp.dot(g_y, f_star)
    mu = (ct_t + jnp.dot(ct_y, f_star)) / denom
    c_y, c_p = vjp(-mu)
    return ct_y + c_y, c_p
