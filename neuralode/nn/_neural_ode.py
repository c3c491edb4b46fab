"""``NeuralODE``: a vector field and its solve settings as one Equinox module."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._checks import check_callable, check_choice
from .._solution import Solution
from ._options import SolveOptions, SolvingModule, Tolerance, check_interval, check_solve
from ._regularisers import NOISE_KINDS, RegularisedField, hutchinson_noise


class NeuralODE(SolvingModule):
    """A neural ODE block: ``y0 ↦ y(t1)`` where ``dy/dt = field(t, y, args)``, ``y(t0) = y0``.

    The paper's ODE-Net block (section 3). ``field`` is any vector field ``field(t, y, args)``
    (typically an Equinox module from :mod:`neuralode.nn`, whose arrays are trained);
    ``y`` may be any pytree of arrays, a single example (``jax.vmap`` the model for a batch,
    which gives every sample its own step sizes; or wrap the field in
    :class:`~neuralode.nn.BatchField` to solve a whole batch as one state).

    Args:
        field: The vector field.
        t0, t1: Integration interval (``t1 < t0`` integrates backwards).
        solve: The solver settings, :class:`~neuralode.nn.SolveOptions` (default: those of
            :func:`neuralode.odeint`). A fixed-step solver with ``dt0``
            (``SolveOptions(solver=nde.RK4(), dt0=0.25)``) gives the paper's RK-Net.
        noise: Hutchinson noise of the Jacobian regulariser, ``"gaussian"`` or
            ``"rademacher"``.

    Example:
        ```python
        import jax, jax.numpy as jnp
        import neuralode as nde
        from neuralode.nn import MLPField, NeuralODE, SolveOptions

        model = NeuralODE(MLPField(2, width=8, depth=1, key=jax.random.key(0)), t1=1.0)
        y1 = model(jnp.ones(2))
        y1, stats = model(jnp.ones(2), return_stats=True)   # stats["nfe"]: forward NFE
        ys = model.trajectory(jnp.ones(2), jnp.linspace(0.0, 1.0, 5)).ys  # (5, 2)
        batch = jax.vmap(model)(jnp.ones((4, 2)))                          # (4, 2)
        rk_net = model.with_solve(solver=nde.RK4(), dt0=0.25)              # 4 RK4 steps
        ```
    """

    field: Callable
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    solve: SolveOptions = eqx.field(static=True)
    noise: str = eqx.field(static=True)

    def __init__(self, field: Callable, *, t0: float = 0.0, t1: float = 1.0,
                 solve: SolveOptions = SolveOptions(), noise: str = "gaussian"):
        owner = "NeuralODE"
        self.field = check_callable(owner, "field", field, "field(t, y, args)")
        self.t0, self.t1 = check_interval(owner, t0, t1)
        self.solve = check_solve(owner, solve)
        self.noise = check_choice(owner, "noise", noise, NOISE_KINDS)


    def __call__(
        self,
        y0: PyTree[Float[ArrayLike, "..."]],
        args: PyTree = None,
        *,
        return_stats: bool = False,
        regularise: bool = False,
        key: PRNGKeyArray | None = None,
        rtol: Tolerance = None,
        atol: Tolerance = None,
        stats_probe: Float[Array, "4"] | None = None,
    ):
        """Solve from ``y0`` at ``t0`` to ``t1`` and return ``y(t1)``.

        Args:
            y0: Initial state (a single example; any pytree of arrays).
            args: Passed to ``field(t, y, args)``.
            return_stats: Also return the solve's statistics ``{"num_steps",
                "num_accepted", "num_rejected", "nfe"}`` (integer arrays: functional, so
                they work under ``jit``/``vmap``).
            regularise: Also return the RNODE regularisers ``{"kinetic": ∫‖f‖² dt,
                "jacobian": ∫‖εᵀ∂f/∂y‖² dt}`` over ``[t0, t1]``, integrated as extra states of
                the same solve (see :class:`RegularisedField`). Needs ``key``.
            key: PRNG key of the Hutchinson noise ``ε`` (one draw per solve).
            rtol, atol: Override the tolerances for this call (traced: no recompilation).
            stats_probe: See :func:`neuralode.odeint` (backward-solve statistics).

        Returns:
            ``y1``; ``(y1, regs)`` with ``regularise``; ``(y1, stats)`` with
            ``return_stats``; ``(y1, regs, stats)`` with both.
        """
        y0 = jax.tree.map(jnp.asarray, y0)
        ts = [self.t0, self.t1]
        tols = dict(rtol=rtol, atol=atol, stats_probe=stats_probe)
        if regularise:
            if key is None:
                raise ValueError(
                    "NeuralODE: `regularise=True` needs `key`, the PRNG key of the Hutchinson "
                    "noise of the Jacobian regulariser."
                )
            eps = hutchinson_noise(key, y0, self.noise)
            dyn = RegularisedField(self.field)
            sol = self.solve.odeint(dyn, dyn.initial_state(y0), ts, (args, eps), **tols)
            y1, regs = jax.tree.map(lambda x: x[-1], sol.ys)
            sign = 1.0 if self.t1 > self.t0 else -1.0
            regs = {k: sign * v for k, v in regs.items()}
            out = (y1, regs)
        else:
            sol = self.solve.odeint(self.field, y0, ts, args, **tols)
            out = (jax.tree.map(lambda x: x[-1], sol.ys),)
        if return_stats:
            out = out + (sol.stats,)
        return out[0] if len(out) == 1 else out

    def trajectory(self, y0: PyTree[Float[ArrayLike, "..."]], ts: Float[ArrayLike, " times"],
                   args: PyTree = None, *, rtol: Tolerance = None, atol: Tolerance = None,
                   stats_probe: Float[Array, "4"] | None = None) -> Solution:
        """Solve from ``y0`` at ``ts[0]`` and return the :class:`~neuralode.Solution` at ``ts``.

        ``t0``/``t1`` of the module are not used: ``ts`` sets the interval. With a fixed-step
        solver ``ts`` must be concrete (a NumPy array or an array created outside ``jit``).
        """
        y0 = jax.tree.map(jnp.asarray, y0)
        return self.solve.odeint(
            self.field, y0, ts, args, rtol=rtol, atol=atol, stats_probe=stats_probe
        )
