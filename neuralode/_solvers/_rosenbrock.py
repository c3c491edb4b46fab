"""Rodas5 and Rodas5P: stiffly accurate Rosenbrock methods of order 5(4) with stiff-aware
dense output.

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
``K_r = Σ_j H_rj u_j``, a polynomial of degree 4 in θ (order 4: its local error is measured
to fall like ``h⁵`` in the tests).

Rodas5P. Steinebach's coefficients for the same scheme (same structure, cost and dense-output
form), chosen to avoid Rodas5's order reduction on the Prothero-Robinson equation
``y' = λ(y - φ(t)) + φ'(t)`` (a stiff component driven by slow forcing) and for a better
dense output. Measured here on ``y' = -1000 (y - cos t)``: 18 steps at rtol 1e-8 where Rodas5
needs 166; on the four Hairer-Wanner problems it takes 3-20% more steps than Rodas5.

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
polynomials of degree 5 in θ, so its error is that of the dense output (order 4).

References:
    E. Hairer, G. Wanner, *Solving Ordinary Differential Equations II: Stiff and
    Differential-Algebraic Problems*, 2nd ed., Springer 1996, section IV.7 (Rosenbrock
    methods, order conditions, the RODAS family).
    G. A. Di Marzo, "RODAS5(4) -- Méthodes de Rosenbrock d'ordre 5(4) adaptées aux problèmes
    différentiels-algébriques", MSc thesis, Université de Genève, 1993.
    G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and numerical
    benchmarks within the Julia Differential Equations package", BIT Numerical Mathematics
    63, 27 (2023).
    C. Rackauckas, Q. Nie, "DifferentialEquations.jl", J. Open Res. Softw. 5(1), 2017 (the
    tabulated coefficients of both methods, with the Rodas5 dense-output coefficients ``H``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._custom_types import FieldValue, RealScalarLike, State
from ._base import AbstractStiffSolver
from ._linear import in_work_dtype, iteration_matrix, jacobians, lu_factor, lu_solve
from ._rk import eval_dense
from ._step import StepContext, StepResult

# ---------------------------------------------------------------------------------------------
# Coefficients (transformed form; stage index 0..7)


@dataclasses.dataclass(frozen=True, eq=False)
class RodasTableau:
    """Coefficients of an 8-stage stiffly accurate Rosenbrock method of the Rodas5 family.

    Attributes:
        name: Human-readable name.
        gamma: The diagonal ``γ``.
        a: ``(8, 8)`` stage-input coefficients (rows 6, 7: those of row 5 plus ones).
        c: Transformed coupling ``C`` ``(8, 8)`` (strictly lower triangular).
        cs: Stage abscissae ``(8,)``.
        d: Time-derivative weights ``γ_i = Σ_j γ_ij`` ``(8,)``.
        m: Solution weights of the transformed stages ``(8,)``.
        h: Dense-output coefficients ``(3, 8)``: ``K_r = Σ_j h[r-1, j] u_j``.
    """

    name: str
    gamma: float
    a: np.ndarray
    c: np.ndarray
    cs: np.ndarray
    d: np.ndarray
    m: np.ndarray
    h: np.ndarray

    @property
    def dense(self) -> np.ndarray:
        """``(4, 8)``: the coefficients of θ^1..θ^4 of the dense output over the ``u_j``.

        ``(1-θ) y0 + θ (y1 + (1-θ)(K1 + θ K2 + θ² K3))`` is ``y0 + θ (Δ + K1) + θ² (K2 - K1)
        + θ³ (K3 - K2) - θ⁴ K3`` with ``Δ = y1 - y0 = Σ_j m_j u_j``.
        """
        h = self.h
        return np.stack([self.m + h[0], h[1] - h[0], h[2] - h[1], -h[2]])


def _tableau(name, gamma, rows_a, rows_c, cs, d, h) -> RodasTableau:
    """Assemble a tableau from the printed rows (``a`` rows 1..5, ``C`` rows 1..7)."""
    a = np.zeros((8, 8))
    for i, row in enumerate(rows_a, start=1):
        a[i, :i] = row
    a[6, :6] = list(rows_a[-1]) + [1.0]
    a[7, :7] = list(rows_a[-1]) + [1.0, 1.0]
    c = np.zeros((8, 8))
    for i, row in enumerate(rows_c, start=1):
        c[i, :i] = row
    m = np.array(list(rows_a[-1]) + [1.0, 1.0, 1.0])
    d = np.array(list(d) + [0.0, 0.0, 0.0])
    cs = np.array([0.0] + list(cs) + [1.0, 1.0, 1.0])
    return RodasTableau(name, gamma, a, c, cs, d, m, np.asarray(h, dtype=np.float64))


# Di Marzo (1993) / Hairer & Wanner: Rodas5.
RODAS5 = _tableau(
    "Rodas5",
    0.19,
    [
        [2.0],
        [3.040894194418781, 1.041747909077569],
        [2.576417536461461, 1.622083060776640, -0.9089668560264532],
        [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443],
        [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405,
         24.13215229196062],
    ],
    [
        [-10.31323885133993],
        [-21.04823117650003, -7.234992135176716],
        [32.22751541853323, -4.943732386540191, 19.44922031041879],
        [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146],
        [-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906,
         318.3822534212147],
        [34.20013733472935, -14.15535402717690, 57.82335640988400, 25.83362985412365,
         1.408950972071624, -6.551835421242162],
        [42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503,
         -31.58359187223370, -6.685968952921985, -5.810979938412932],
    ],
    [0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580],
    [0.19, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343,
     -0.377417564392089818],
    [
        [27.354592673333357, -6.925207756232857, 26.40037733258859, 0.5635230501052979,
         -4.699151156849391, -1.6008677469422725, -1.5306074446748028, -1.3929872940716344],
        [44.19024239501722, 1.3677947663381929e-13, 202.93261852171622, -35.5669339789154,
         -181.91095152160645, 3.4116351403665033, 2.5793540257308067, 2.2435122582734066],
        [-44.0988150021747, -5.755396159656812e-13, -181.26175034586677, 56.99302194811676,
         183.21182741427398, -7.480257918273637, -5.792426076169686, -5.32503859794143],
    ],
)

# Steinebach (2023): Rodas5P.
RODAS5P = _tableau(
    "Rodas5P",
    0.21193756319429014,
    [
        [3.0],
        [2.849394379747939, 0.45842242204463923],
        [-6.954028509809101, 2.489845061869568, -10.358996098473584],
        [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641],
        [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
         0.030198172008377946],
    ],
    [
        [-14.155112264123755],
        [-17.97296035885952, -2.859693295451294],
        [147.12150275711716, -1.41221402718213, 71.68940251302358],
        [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306],
        [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
         -0.6610691825249471],
        [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
         -19.097331116725623, -28.087943162872662],
        [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
         -40.06618937091002, -54.66780262877968, -9.48861652309627],
    ],
    [0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664],
    [0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734,
     2.325825639765069],
    [
        [25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
         0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
        [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
         20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372],
        [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
         -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722],
    ],
)

# Three-point Gauss-Legendre rule on [0, 1] (exact for degree 5).
_G = float(np.sqrt(15.0) / 10.0)
GAUSS_THETA = (0.5 - _G, 0.5, 0.5 + _G)
GAUSS_W = (5.0 / 18.0, 4.0 / 9.0, 5.0 / 18.0)


def lincomb(coeffs: Sequence[float], vecs: Sequence[Array], base: Array | None = None) -> Array:
    """``base + Σ_j coeffs[j] vecs[j]`` as an unrolled sum with the zero terms left out."""
    acc = base
    for cj, vj in zip(coeffs, vecs, strict=False):
        if cj == 0.0:
            continue
        term = vj if cj == 1.0 else float(cj) * vj
        acc = term if acc is None else acc + term
    return jnp.zeros_like(vecs[0]) if acc is None else acc


def stage_time(
    t: RealScalarLike, c: float, h: RealScalarLike, t_hi: RealScalarLike | None
) -> RealScalarLike:
    """``t + c h``; stages at ``c <= 1`` never pass ``t_hi`` (rounding may overshoot an ulp)."""
    if c == 0.0:
        return t
    tc = t + float(c) * h
    return tc if (t_hi is None or c > 1.0) else jnp.minimum(tc, t_hi)


@dataclasses.dataclass(frozen=True)
class AbstractRodas(AbstractStiffSolver):
    """The step of the 8-stage stiffly accurate Rosenbrock methods (Rodas5, Rodas5P).

    Subclasses set the class attribute ``tableau`` (a :class:`RodasTableau`).
    """

    tableau: ClassVar[RodasTableau]  # type: ignore[assignment]
    DENSE_DEGREE = 4
    NUM_NODES = 3  # the three-point Gauss rule on the dense output
    NFE_PER_STEP = 8

    def step(
        self, ctx: StepContext, t: RealScalarLike, y: State, f0: FieldValue, h: RealScalarLike
    ) -> StepResult:
        """One step of size ``h > 0`` from ``(t, y)`` of ``dy/dt = direction·g(t, y)`` with
        ``f0 = g(t, y)`` (see the module and :meth:`AbstractAdaptiveSolver.step`).

        The sign enters two scalars only: with ``F = direction·g`` the stage equations
        ``(I - hγJ_F) u_i = hγ(F_i + Σ c_ij u_j / h + d_i h F_t)`` are
        ``(I - hγ·direction·J) u_i = hγ·direction·(g_i + direction·Σ c_ij u_j / h + d_i h g_t)``.
        """
        # Linearly implicit: no iteration to stop, ``ctx.tol`` is not used.
        dtype, quad, t_hi = y.dtype, ctx.quad, ctx.t_hi
        wd, gw, yw, k0, d0 = in_work_dtype(ctx, y, f0)
        hw = jnp.asarray(h).astype(wd)
        jac, f_t, g_y, g_t = jacobians(gw, t, yw, quad, with_t=True)
        tab = self.tableau
        sgn = jnp.asarray(ctx.direction).astype(wd)
        hg = hw * tab.gamma * sgn  # signed: hγ·direction
        lu = lu_factor(iteration_matrix(jac, hg))
        inv_h = sgn / hw  # direction / h
        us, uqs = [], []
        for i in range(8):
            if i == 0:
                fi, di = k0, (None if d0 is None else d0.astype(wd))
            else:
                yi = lincomb(tab.a[i, :i], us, yw)
                fi, di = ctx.split(gw(stage_time(t, tab.cs[i], h, t_hi), yi))
            rhs = fi
            if i > 0:
                rhs = rhs + inv_h * lincomb(tab.c[i, :i], us)
            if tab.d[i] != 0.0:
                rhs = rhs + (float(tab.d[i]) * hw) * f_t
            ui = hg * lu_solve(lu, rhs)
            us.append(ui)
            if quad:
                rq = di + g_y @ ui
                if i > 0:
                    rq = rq + inv_h * lincomb(tab.c[i, :i], uqs)
                if tab.d[i] != 0.0:
                    rq = rq + (float(tab.d[i]) * hw) * g_t
                uqs.append(hg * rq)
        y1w = lincomb(tab.m, us, yw)
        y1 = y1w.astype(dtype)
        f1 = ctx.g(stage_time(t, 1.0, h, t_hi), y1)
        err = us[7]
        q_inc = q_err = None
        if quad:
            q_inc = lincomb(tab.m, uqs)
            q_err = uqs[7]
            qdtype = d0.dtype
            q_inc = q_inc.astype(qdtype)
        dense = tab.dense
        coeffs = jnp.stack([lincomb(dense[p], us) for p in range(4)])
        nodes = tuple(
            (float(th), float(w), eval_dense(yw, coeffs, th).astype(dtype))
            for th, w in zip(GAUSS_THETA, GAUSS_W, strict=True)
        )
        return StepResult(
            y1=y1, f1=f1, err=err, err2=None, q_inc=q_inc, q_err=q_err,
            stages=coeffs.astype(dtype), nfe=8, ok=None, njev=1, nlinsolve=8, nodes=nodes,
        )


@dataclasses.dataclass(frozen=True)
class Rodas5(AbstractRodas):
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

    tableau = RODAS5


@dataclasses.dataclass(frozen=True)
class Rodas5P(AbstractRodas):
    """Rodas5P: Steinebach's re-optimised Rodas5 (same structure, cost and interface).

    The coefficients were chosen (Steinebach 2023) to keep order 4 (instead of Rodas5's order
    reduction to about 2-3) on the Prothero-Robinson test equation
    ``y' = λ(y - φ(t)) + φ'(t)`` for stiff ``λ``, i.e. when a stiff component is driven by
    the slow time dependence of the problem, and for a dense output that is accurate on
    stiff problems; SciML recommends it as its default Rosenbrock method. Everything else as
    :class:`Rodas5`: 8 evaluations, one Jacobian and 8 linear solves per step attempt, an
    embedded order-4 estimate, a degree-4 dense output, and every gradient mode.

    References:
        G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and numerical
        benchmarks within the Julia Differential Equations package", BIT Numerical
        Mathematics 63, 27 (2023).
    """

    tableau = RODAS5P
