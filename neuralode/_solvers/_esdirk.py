"""Kvaerno5: an ESDIRK method of order 5(4), Newton iterations with a stage predictor.

An explicit-first-stage, singly diagonally implicit Runge-Kutta method (ESDIRK): stage ``i``
solves ``k_i = f(t + c_i h, Z_i + hγ k_i)`` with ``Z_i = y + h Σ_{j<i} a_ij k_j`` for the
stage derivative ``k_i``. Kværnø's method has seven stages (the first explicit, six implicit
with the same diagonal ``γ = 0.26``), is stiffly accurate (``b`` is the last row of ``A``,
so ``y1`` is the last stage value) and L-stable, and embeds a fourth-order solution (the sixth
stage value, ``b̂`` = sixth row of ``A``).

Newton. Every implicit stage runs simplified-Newton (chord) iterations
``(I - hγJ) δ = -(k - f(t_i, Z_i + hγ k))`` with one Jacobian ``J = ∂f/∂y(t, y)`` and one LU
factorisation per step attempt, started from a predictor that extrapolates the previous stage
derivatives (``k_i⁰ = Σ_j α_ij k_j``, the predictor of OrdinaryDiffEq.jl and diffrax). The
iteration stops (Hairer & Wanner II, IV.8) when the estimated remaining error
``ρ/(1-ρ)·‖hγδ‖`` is below ``κ`` in the RMS norm scaled by ``atol + rtol·|y|`` (the loop's
own tolerances), where ``ρ`` is the observed contraction rate, or when the update is
negligible (for the tolerance, or down to the rounding of the stage value). At tolerances near
machine precision ``κ`` is raised to ``10·eps/rtol``, as in RADAU5. The iteration fails (the
step reports ``ok=False``, is rejected and shrinks by the controller's ``factormin``) when an
update grows more than twice the previous one or is not finite, or when the allowed
iterations run out. (A stricter test, ``ρ >= 1`` or "cannot converge in the remaining
iterations", as in Hairer's RADAU5, rejected most large steps on Robertson's problem whose
iterations did converge after a slow start: 221 steps instead of 79 with the same
controller.)

Derivatives. The converged stage is differentiated by the implicit function theorem
(``lax.custom_root``), never through the iterations: the tangent (and, transposed, the
cotangent) of ``k_i`` solves ``(I - hγ f_y(Z_i + hγk_i)) k̇_i = ḟ`` with the Jacobian at the
converged stage. Forward and reverse mode and their compositions (second order) follow.

Dense output: the cubic Hermite interpolant through ``(y0, f0)`` and ``(y1, f1)`` (order 3),
as diffrax's Kvaerno5; ``f1 = f(t1, y1)`` is evaluated afresh rather than taken from the last
stage derivative (the Newton residual of a stiff component can make those differ), which
also makes the next step start from the exact ``f``.

Stage 3 has ``c_3 = 1.2303``: it is evaluated past the end of the step (on the final step,
up to ``0.23 h`` past the end of the interval), as diffrax and OrdinaryDiffEq.jl do; clamping
it to the end would perturb the final step of a time-dependent problem by ``O(h² ∂f/∂t)``.
The vector field must therefore be defined slightly beyond the output times (the explicit
and Rosenbrock solvers never evaluate it there).

Quadrature. The stage states are a Runge-Kutta quadrature: nodes ``(c_j, b_j, Z_j + hγk_j)``
integrate a channel that does not feed back exactly as the method integrates the augmented
system. With ``quad=True`` the channel is evaluated at each converged stage state (one extra
evaluation per implicit stage) and advanced with ``b`` (error with ``b - b̂``).

References:
    A. Kværnø, "Singly diagonally implicit Runge-Kutta methods with an explicit first stage",
    BIT Numerical Mathematics 44(3), 489-502, 2004 (the coefficients).
    E. Hairer, G. Wanner, *Solving Ordinary Differential Equations II*, 2nd ed., Springer
    1996, section IV.8 (Newton iterations for implicit Runge-Kutta methods and their stopping
    criterion).
    C. Rackauckas, Q. Nie, "DifferentialEquations.jl", J. Open Res. Softw. 5(1), 2017, and
    P. Kidger's diffrax (the stage predictor, with diffrax's correction of its first row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from .._custom_types import (
    BoolScalar,
    DType,
    FieldValue,
    IntScalar,
    RealScalar,
    RealScalarLike,
    State,
    Tolerances,
)
from ._base import AbstractStiffSolver
from ._linear import in_work_dtype, iteration_matrix, jacobians, lu_factor, lu_solve, rms
from ._rosenbrock import lincomb, stage_time
from ._step import StepContext, StepResult

GAMMA = 0.26
# The Newton iteration is declared divergent when one update grows past this factor of the
# previous one (diffrax's VeryChord uses the same; the first iterations from a poor predictor
# may contract slowly, or grow a little, before they settle).
DIVERGENCE_RATE = 2.0

A = np.zeros((7, 7))
A[1, :2] = [GAMMA, GAMMA]
A[2, :3] = [0.13, 0.84033320996790809, GAMMA]
A[3, :4] = [0.22371961478320505, 0.47675532319799699, -0.06470895363112615, GAMMA]
A[4, :5] = [0.16648564323248321, 0.10450018841591720, 0.03631482272098715,
            -0.13090704451073998, GAMMA]
A[5, :6] = [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141,
            0.61943039072480676, GAMMA]
A[6, :7] = [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046,
            0.62993304899016403, 0.06962479448202728, GAMMA]

B = A[6].copy()  # stiffly accurate
B_HAT = A[5].copy()  # the embedded fourth-order solution is the sixth stage value
B_ERR = B - B_HAT
CS = A.sum(axis=1)  # 0, 0.52, 1.2303, 0.8958, 0.4364, 1, 1

# Stage predictors k_i⁰ = Σ_j P[i, j] k_j (rows sum to one).
P = np.zeros((7, 7))
P[1, :1] = [1.0]
P[2, :2] = [-1.366025403784441, 2.3660254037844357]
P[3, :3] = [-0.19650552613122207, 0.8113579546496623, 0.38514757148155954]
P[4, :3] = [0.10375304369958693, 0.937994698066431, -0.04174774176601781]
P[5, :3] = [-0.17281112873898072, 0.6235784481025847, 0.5492326806363959]
P[6, :6] = A[5, :6]  # the sixth stage's own weights (a_6j, and γ on k_6)


def _newton(
    gw: Callable[[RealScalarLike, State], State],
    ti: RealScalarLike,
    base: State,
    hg: RealScalar,
    pred: State,
    lu: tuple[Array, Array],
    scale: State,
    active: BoolScalar,
    kappa: RealScalarLike,
    max_iters: int,
) -> tuple[State, IntScalar, BoolScalar]:
    """Solve ``k = f(ti, base + hg k)`` by chord iterations; differentiable by the IFT.

    Returns ``(k, iterations, converged)``. ``active=False`` skips the iteration (a previous
    stage already failed) and reports failure.
    """

    def residual(k):
        return k - gw(ti, base + hg * k)

    eps = float(jnp.finfo(pred.dtype).eps)

    def solve(fun, k0):
        def cond(c):
            _, it, _, done, _ = c
            return ~done & (it < max_iters)

        def body(c):
            k, it, size_prev, _, _ = c
            dk = -lu_solve(lu, fun(k))
            k = k + dk
            size = rms(hg * dk / scale)
            rate = size / size_prev
            first = it == 0
            # Nothing left to correct: the update is negligible for the tolerance, or down to
            # the rounding of the stage value (a tolerance near machine precision).
            settled = (size <= 1e-3 * kappa) | (
                rms(hg * dk) <= 64.0 * eps * rms(base + hg * k)
            )
            converged = settled | (~first & (rate < 1.0)
                                   & (rate / (1.0 - rate) * size <= kappa))
            diverged = ~first & ~converged & (rate > DIVERGENCE_RATE)
            bad = ~jnp.isfinite(size) | diverged
            return k, it + 1, size, converged | bad, converged & ~bad

        init = (k0, jnp.zeros((), jnp.int32), jnp.ones((), k0.dtype), ~active,
                jnp.zeros((), bool))
        k, it, _, _, ok = lax.while_loop(cond, body, init)
        # Auxiliary outputs as floats: custom_root gives them integer "zero tangents", which
        # jax rejects for integer and boolean outputs (they need float0).
        return k, jnp.stack([it.astype(k.dtype), ok.astype(k.dtype)])

    def tangent_solve(lin, b):
        mat = jax.jacfwd(lin)(b)
        return jnp.linalg.solve(mat, b)

    k, aux = lax.custom_root(residual, pred, solve, tangent_solve, has_aux=True)
    aux = lax.stop_gradient(aux)
    return k, aux[0].astype(jnp.int32), aux[1] > 0.5


@dataclasses.dataclass(frozen=True)
class Kvaerno5(AbstractStiffSolver):
    """Kværnø's ESDIRK 5(4): an L-stable, stiffly accurate implicit Runge-Kutta method.

    Seven stages (the first explicit), each implicit stage solved by simplified Newton
    iterations with one Jacobian (``jax.jacfwd``) and one LU factorisation per step attempt,
    started from a stage predictor. A step whose Newton iteration fails is rejected and
    retried with a smaller step. The implicit stages are differentiated by the implicit
    function theorem, so every gradient mode works and none differentiates the iterations.
    Dense output: cubic Hermite (order 3).

    Statistics: ``nfe`` counts one evaluation per Newton iteration plus ``f(t1, y1)`` per step
    attempt, ``njev`` one Jacobian and ``nlinsolve`` one linear solve per Newton iteration.

    Args:
        newton_kappa: Stop the Newton iteration when its estimated remaining error is below
            ``newton_kappa`` times the tolerance (Hairer & Wanner's ``κ``; default 0.01).
        newton_max_iters: Newton iterations per stage before the step is rejected
            (default 10).
        newton_rtol, newton_atol: Tolerances of the Newton stopping test; ``None`` (default)
            takes the solve's ``rtol``/``atol``.

    Example:
        ```python
        sol = nde.odeint(f, y0, ts, solver=nde.Kvaerno5(), rtol=1e-6, atol=1e-8)
        ```

    See the module ``neuralode._solvers._esdirk`` for the coefficients and references
    (Kværnø 2004; Hairer & Wanner II, section IV.8).
    """

    DENSE_DEGREE = 3  # cubic Hermite
    NUM_NODES = int(np.count_nonzero(B))
    NFE_PER_STEP = 13  # nominal: two Newton iterations per implicit stage and f(t1, y1)

    newton_kappa: float = 1e-2
    newton_max_iters: int = 10
    newton_rtol: float | None = None
    newton_atol: float | None = None

    def __post_init__(self):
        if not (isinstance(self.newton_kappa, int | float) and 0 < self.newton_kappa < 1):
            raise ValueError(
                f"Kvaerno5: `newton_kappa` must be in (0, 1), got {self.newton_kappa!r}."
            )
        if (isinstance(self.newton_max_iters, bool) or not isinstance(self.newton_max_iters, int)
                or self.newton_max_iters < 1):
            raise ValueError(
                "Kvaerno5: `newton_max_iters` must be a positive int, got "
                f"{self.newton_max_iters!r}."
            )
        for name in ("newton_rtol", "newton_atol"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ValueError(f"Kvaerno5: `{name}` must be a positive number or None.")


    def _tolerances(self, tol: Tolerances | None, wd: DType) -> tuple[RealScalar, RealScalar]:
        rtol = atol = None
        if tol is not None:
            rtol, atol = tol
        rtol = self.newton_rtol if self.newton_rtol is not None else rtol
        atol = self.newton_atol if self.newton_atol is not None else atol
        rtol = 1e-6 if rtol is None else rtol
        atol = 1e-6 if atol is None else atol
        return jnp.asarray(rtol).astype(wd), jnp.asarray(atol).astype(wd)

    def step(
        self, ctx: StepContext, t: RealScalarLike, y: State, f0: FieldValue, h: RealScalarLike
    ) -> StepResult:
        """One Kvaerno5 step of size ``h > 0`` from ``(t, y)`` of ``dy/dt = direction·g(t, y)``
        with ``f0 = g(t, y)``. The stages ``k_i`` are values of ``g``; every state combination
        uses the signed step ``direction·h``."""
        dtype, quad, t_hi = y.dtype, ctx.quad, ctx.t_hi
        wd, gw, yw, k0, d0 = in_work_dtype(ctx, y, f0)
        hw = jnp.asarray(h).astype(wd) * jnp.asarray(ctx.direction).astype(wd)  # signed step
        rtol, atol = self._tolerances(ctx.tol, wd)
        scale = lax.stop_gradient(atol + rtol * jnp.abs(yw))
        # Hairer's floor (RADAU5's fnewt): at a tolerance near machine precision, ask the
        # iteration for no more than ten roundings of the relative tolerance.
        kappa = jnp.maximum(self.newton_kappa, 10.0 * float(jnp.finfo(wd).eps) / rtol)
        hg = hw * GAMMA

        def head(t_, y_):
            return ctx.split(gw(t_, y_))[0]

        # The chord matrix only steers the iteration (the converged stages do not depend on
        # it), so it carries no derivatives.
        jac = jacobians(head, t, lax.stop_gradient(yw), False, with_t=False)[0]
        lu = lax.stop_gradient(lu_factor(iteration_matrix(jac, lax.stop_gradient(hg))))

        ks, zs, ds = [k0], [yw], [None if d0 is None else d0.astype(wd)]
        iters = jnp.zeros((), jnp.int32)
        ok = jnp.ones((), bool)
        for i in range(1, 7):
            base = lincomb(A[i, :i], [hw * k for k in ks], yw)
            ti = stage_time(t, CS[i], h, t_hi)  # internal time: the unsigned step
            pred = lincomb(P[i, :i], ks)
            ki, it, conv = _newton(head, ti, base, hg, pred, lu, scale, ok, kappa,
                                   self.newton_max_iters)
            iters = iters + it
            ok = ok & conv
            zi = base + hg * ki
            ks.append(ki)
            zs.append(zi)
            if quad:
                ds.append(ctx.split(gw(ti, zi))[1])
        y1w = zs[6]
        y1 = y1w.astype(dtype)
        f1 = ctx.g(stage_time(t, 1.0, h, t_hi), y1)
        k1 = ctx.split(f1)[0].astype(wd)
        err = hw * lincomb(B_ERR, ks)
        q_inc = q_err = None
        if quad:
            q_inc = (hw * lincomb(B, ds)).astype(d0.dtype)
            q_err = hw * lincomb(B_ERR, ds)
        # Cubic Hermite through (y0, f0), (y1, f1): y0 + θ c1 + θ² c2 + θ³ c3.
        delta = y1w - yw
        hf0, hf1 = hw * k0, hw * k1
        coeffs = jnp.stack([hf0, 3.0 * delta - 2.0 * hf0 - hf1, -2.0 * delta + hf0 + hf1])
        nodes = tuple((float(CS[j]), float(B[j]), zs[j].astype(dtype)) for j in range(7)
                      if B[j] != 0.0)
        nfe = iters + 1 + (6 if quad else 0)
        return StepResult(
            y1=y1, f1=f1, err=err, err2=None, q_inc=q_inc, q_err=q_err,
            stages=coeffs.astype(dtype), nfe=nfe, ok=ok, njev=1, nlinsolve=iters, nodes=nodes,
        )

