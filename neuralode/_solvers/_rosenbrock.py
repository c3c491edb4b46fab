"""Rodas5: a stiffly accurate Rosenbrock method of order 5(4) with a stiff-aware dense output.

A Rosenbrock method is a linearly implicit Runge-Kutta method: every stage solves one linear
system with the same matrix ``I - hγJ`` (``J`` the Jacobian at the start of the step), so a
step costs one Jacobian, one LU factorisation and eight triangular solves, and no Newton
iteration can fail to converge. In the transformed variables of Hairer & Wanner (II, IV.7,
eq. (7.25)) a step of the non-autonomous system ``y' = f(t, y)`` reads

    (I/(hγ) - J) u_i = f(t + c_i h, y + Σ_{j<i} a_ij u_j) + Σ_{j<i} (C_ij/h) u_j + d_i h f_t,
    y1 = y + Σ_i m_i u_i,

with ``f_t = ∂f/∂t`` at ``(t, y)``. Rodas5 is stiffly accurate: the last three stages sit at
``t + h``, ``y1`` is the input of stage 8 plus ``u_8`` and the embedded fourth-order solution
is the input of stage 8, so the error estimate is ``u_8``.

Coefficients. Di Marzo's Rodas5 (1993, Hairer & Wanner's fifth-order member of the RODAS
family), in the transformed form ``a``, ``C``, ``γ``, ``d``, ``c`` used by the codes, with the
fourth-order-in-θ dense output of OrdinaryDiffEq.jl (coefficients ``H``, fitted to the stage
values so that the interpolant inherits the stiff accuracy of the stages). The transformed
coefficients follow from the method's ``α_ij``, ``β_ij = α_ij + γ_ij`` and ``b`` by
``a = αΓ⁻¹``, ``C = diag(γ⁻¹) - Γ⁻¹``, ``m = bΓ⁻¹``; ``tests/test_stiff.py`` recomputes them
from ``α``, ``β`` and checks the Rosenbrock order conditions of ``(α, β, b)`` (order 5, and 4
for the embedded solution), and measures the convergence orders of the step, the error
estimate and the dense output.

Dense output: ``y(t + θh) = (1-θ) y0 + θ (y1 + (1-θ)(K1 + θ (K2 + θ K3)))`` with
``K_r = Σ_j H_rj u_j``, a polynomial of degree 4 in θ (order 4 measured; tested).

Quadrature channel (``quad=True``: the parameter adjoint of a continuous adjoint with the full
norm). The channel ``q' = G(t, y)`` is advanced by the same Rosenbrock method applied to the
augmented system, whose Jacobian ``[[J, 0], [G_y, 0]]`` makes every ``q`` stage explicit:
``u^q_i = hγ (G_i + Σ_{j<i} (C_ij/h) u^q_j + d_i h G_t + G_y u_i)``. This is exact for the
augmented system (same order 5(4), error estimate ``u^q_8``); ``G_y`` (``m × n``) comes from
the same forward-mode pass as ``J``.

Quadrature nodes (``quad=False``, the seminorm adjoints). The stage states of a Rosenbrock
method are not a quadrature rule (the linear terms ``J u_j`` are part of the method), so the
nodes are the three Gauss-Legendre points of the step, with states from the dense output:
``h Σ_j w_j G(t + θ_j h, y(θ_j))`` integrates ``G`` along the interpolant exactly for
polynomials of degree 5 in θ; its error is that of the dense output (order 4), far below the
tolerance the step was accepted at.

References:
    E. Hairer, G. Wanner, *Solving Ordinary Differential Equations II: Stiff and
    Differential-Algebraic Problems*, 2nd ed., Springer 1996, section IV.7 (Rosenbrock
    methods, order conditions, the RODAS family).
    G. A. Di Marzo, "RODAS5(4) -- Méthodes de Rosenbrock d'ordre 5(4) adaptées aux problèmes
    différentiels-algébriques", MSc thesis, Université de Genève, 1993.
    C. Rackauckas, Q. Nie, "DifferentialEquations.jl", J. Open Res. Softw. 5(1), 2017 (the
    Rodas5 dense-output coefficients ``H``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ._base import AbstractAdaptiveSolver
from ._linear import (
    field_in,
    iteration_matrix,
    jacobians,
    lu_factor,
    lu_solve,
    split,
    work_dtype,
)
from ._rk import eval_dense
from ._step import StepResult

# ---------------------------------------------------------------------------------------------
# Coefficients (transformed form; stage index 0..7)

GAMMA = 0.19

_a65 = [
    -14.09640773051259,
    6.925207756232704,
    -41.47510893210728,
    2.343771018586405,
    24.13215229196062,
]

A = np.zeros((8, 8))
A[1, :1] = [2.0]
A[2, :2] = [3.040894194418781, 1.041747909077569]
A[3, :3] = [2.576417536461461, 1.622083060776640, -0.9089668560264532]
A[4, :4] = [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443]
A[5, :5] = _a65
A[6, :6] = _a65 + [1.0]
A[7, :7] = _a65 + [1.0, 1.0]

C = np.zeros((8, 8))
C[1, :1] = [-10.31323885133993]
C[2, :2] = [-21.04823117650003, -7.234992135176716]
C[3, :3] = [32.22751541853323, -4.943732386540191, 19.44922031041879]
C[4, :4] = [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146]
C[5, :5] = [
    -46.22004352711257,
    -17.49534862857472,
    -289.6389582892057,
    93.60855400400906,
    318.3822534212147,
]
C[6, :6] = [
    34.20013733472935,
    -14.15535402717690,
    57.82335640988400,
    25.83362985412365,
    1.408950972071624,
    -6.551835421242162,
]
C[7, :7] = [
    42.57076742291101,
    -13.80770672017997,
    93.98938432427124,
    18.77919633714503,
    -31.58359187223370,
    -6.685968952921985,
    -5.810979938412932,
]

# Solution weights of the transformed stages (y1 = y + Σ m_j u_j): stiffly accurate.
M = np.array(_a65 + [1.0, 1.0, 1.0])
# Error estimate: y1 minus the embedded (stage 8 input) solution.
M_ERR = np.zeros(8)
M_ERR[7] = 1.0

# Stage abscissae and the time-derivative weights γ_i = Σ_j γ_ij.
CS = np.array([0.0, 0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580,
               1.0, 1.0, 1.0])
D = np.array([GAMMA, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343,
              -0.377417564392089818, 0.0, 0.0, 0.0])

# Dense output: K_r = Σ_j H[r, j] u_j, r = 1..3.
H = np.array(
    [
        [27.354592673333357, -6.925207756232857, 26.40037733258859, 0.5635230501052979,
         -4.699151156849391, -1.6008677469422725, -1.5306074446748028, -1.3929872940716344],
        [44.19024239501722, 1.3677947663381929e-13, 202.93261852171622, -35.5669339789154,
         -181.91095152160645, 3.4116351403665033, 2.5793540257308067, 2.2435122582734066],
        [-44.0988150021747, -5.755396159656812e-13, -181.26175034586677, 56.99302194811676,
         183.21182741427398, -7.480257918273637, -5.792426076169686, -5.32503859794143],
    ]
)

# (1-θ) y0 + θ (y1 + (1-θ)(K1 + θ K2 + θ² K3)) = y0 + θ (Δ + K1) + θ² (K2 - K1)
#                                                  + θ³ (K3 - K2) - θ⁴ K3,  Δ = Σ m_j u_j.
DENSE = np.stack([M + H[0], H[1] - H[0], H[2] - H[1], -H[2]])  # (4, 8): powers θ^1..θ^4

# Three-point Gauss-Legendre rule on [0, 1] (exact for degree 5).
_G = float(np.sqrt(15.0) / 10.0)
GAUSS_THETA = (0.5 - _G, 0.5, 0.5 + _G)
GAUSS_W = (5.0 / 18.0, 4.0 / 9.0, 5.0 / 18.0)


def lincomb(coeffs: Sequence[float], vecs: Sequence, base=None):
    """``base + Σ_j coeffs[j] vecs[j]`` as an unrolled sum with the zero terms left out."""
    acc = base
    for cj, vj in zip(coeffs, vecs, strict=False):
        if cj == 0.0:
            continue
        term = vj if cj == 1.0 else float(cj) * vj
        acc = term if acc is None else acc + term
    return jnp.zeros_like(vecs[0]) if acc is None else acc


def stage_time(t, c: float, h, t_hi):
    """``t + c h``; stages at ``c <= 1`` never pass ``t_hi`` (rounding may overshoot an ulp)."""
    if c == 0.0:
        return t
    tc = t + float(c) * h
    return tc if (t_hi is None or c > 1.0) else jnp.minimum(tc, t_hi)


@dataclasses.dataclass(frozen=True)
class Rodas5(AbstractAdaptiveSolver):
    """Rodas5: stiffly accurate Rosenbrock method of order 5 with an embedded order-4 estimate.

    For stiff problems of small and medium size (up to a few hundred states): each step
    evaluates the Jacobian ``∂f/∂y`` (and ``∂f/∂t``) once by forward-mode autodiff
    (``jax.jacfwd``), factorises ``I - hγJ`` once (LU) and solves eight linear systems with
    it; it needs no Newton iteration, so a step never fails for want of convergence. The last
    stages sit at ``t + h`` and the solution is the last stage's value (stiff accuracy), so it
    damps infinitely stiff components exactly (L-stable) and suits differential equations with
    fast transients and algebraic-like constraints. Dense output: Rodas5's own stiff-aware
    interpolant of degree 4 (order 4).

    Statistics per step attempt: 8 evaluations of ``f`` (7 stages and ``f(t1, y1)``), one
    Jacobian (``stats["njev"]``) and 8 linear solves (``stats["nlinsolve"]``). Every gradient
    mode differentiates it: the linear algebra is differentiable, so
    :class:`~neuralode.CheckpointAdjoint` takes the exact derivative of each step (which
    involves second derivatives of ``f``), and the continuous adjoints solve their backward
    system with Rodas5 too.

    Example:
        ```python
        sol = nde.odeint(robertson, y0, ts, solver=nde.Rodas5(), rtol=1e-6, atol=1e-10)
        sol.stats["njev"], sol.stats["nlinsolve"]
        ```

    See the module ``neuralode._solvers._rosenbrock`` for the coefficients and references
    (Hairer & Wanner II, section IV.7; Di Marzo 1993).
    """

    @property
    def order(self) -> int:
        return 5

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def error_order(self) -> int:
        return 4

    @property
    def controller_beta(self) -> float:
        # Measured on the Hairer-Wanner stiff problems (benchmarks/stiff.py): the damping P
        # term of the fifth-order pairs costs Rodas5 extra rejections after sharp transients.
        return 0.0

    @property
    def dense_degree(self) -> int:
        return 4

    @property
    def num_nodes(self) -> int:
        return 3

    @property
    def dense_costs_evaluations(self) -> bool:
        return False

    @property
    def nfe_per_step(self) -> int:
        return 8

    def step(self, g, t, y, f0, h, t_hi=None, quad: bool = False, tol=None) -> StepResult:
        """One Rodas5 step of size ``h`` from ``(t, y)`` with ``f0 = g(t, y)``."""
        del tol  # linearly implicit: no iteration to stop
        dtype = y.dtype
        wd = work_dtype(dtype)
        gw = field_in(g, dtype, wd, quad)
        yw = y.astype(wd)
        hw = jnp.asarray(h).astype(wd)
        k0, d0 = split(f0, quad)
        k0 = k0.astype(wd)
        jac, f_t, g_y, g_t = jacobians(gw, t, yw, quad, with_t=True)
        hg = hw * GAMMA
        lu = lu_factor(iteration_matrix(jac, hg))
        inv_h = 1.0 / hw
        us, uqs = [], []
        for i in range(8):
            if i == 0:
                fi, di = k0, (None if d0 is None else d0.astype(wd))
            else:
                yi = lincomb(A[i, :i], us, yw)
                fi, di = split(gw(stage_time(t, CS[i], h, t_hi), yi), quad)
            rhs = fi
            if i > 0 and np.any(C[i, :i] != 0.0):
                rhs = rhs + inv_h * lincomb(C[i, :i], us)
            if D[i] != 0.0:
                rhs = rhs + (float(D[i]) * hw) * f_t
            ui = hg * lu_solve(lu, rhs)
            us.append(ui)
            if quad:
                rq = di + g_y @ ui
                if i > 0:
                    rq = rq + inv_h * lincomb(C[i, :i], uqs)
                if D[i] != 0.0:
                    rq = rq + (float(D[i]) * hw) * g_t
                uqs.append(hg * rq)
        y1w = lincomb(M, us, yw)
        y1 = y1w.astype(dtype)
        f1 = g(stage_time(t, 1.0, h, t_hi), y1)
        err = us[7]
        q_inc = q_err = None
        if quad:
            q_inc = lincomb(M, uqs)
            q_err = uqs[7]
            qdtype = d0.dtype
            q_inc = q_inc.astype(qdtype)
        coeffs = jnp.stack([lincomb(DENSE[p], us) for p in range(4)])
        nodes = tuple(
            (float(th), float(w), eval_dense(yw, coeffs, th).astype(dtype))
            for th, w in zip(GAUSS_THETA, GAUSS_W, strict=True)
        )
        return StepResult(
            y1=y1, f1=f1, err=err, err2=None, q_inc=q_inc, q_err=q_err,
            stages=coeffs.astype(dtype), nfe=8, ok=None, njev=1, nlinsolve=8, nodes=nodes,
        )

    def dense(self, g, t, y, h, result: StepResult, t_hi=None, quad: bool = False):
        """``(coeffs, 0)``: the dense polynomial was formed by the step (no evaluations)."""
        return result.stages, 0
