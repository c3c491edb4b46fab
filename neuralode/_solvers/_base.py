"""Butcher tableaus and the solver classes built on them.

Every Runge-Kutta method in neuralode is data: a :class:`ButcherTableau` that holds the stage
coefficients, the solution weights, the embedded error weights and a dense-output matrix. One
generic step (``neuralode._solvers._rk``) runs all of them.

Dense output convention. Stages are numbered ``k_0 .. k_{S-1}`` where the first ``s`` are the
tableau stages, then (for tableaus that are not FSAL but need it) ``f(t1, y1)``, then any extra
stages listed in ``extra_c``/``extra_a``. The interpolant on a step ``[t0, t0 + h]`` is

    y(t0 + θ h) = y0 + h Σ_j Σ_{p=1..P} interp[j, p-1] θ^p k_j,

so a step's dense output is a polynomial in θ whose coefficients are one matrix product.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .._custom_types import DenseCoeffs, FieldValue, RealScalarLike, State
from ._rk import combine, signed_step, stage_time
from ._step import StepContext, StepResult


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """Coefficients of an explicit Runge-Kutta method (with optional embedded pair).

    Attributes:
        name: Human-readable name.
        c: Nodes, shape ``(s,)``.
        a: Stage matrix, shape ``(s, s)``, strictly lower triangular.
        b: Solution weights, shape ``(s,)``.
        order: Order of the propagated solution.
        b_err: ``b - b_hat`` (difference to the embedded method), shape ``(s,)``; ``None`` for
            fixed-step methods.
        error_order: Order ``q`` of the error estimate, so that the local error is ``O(h^(q+1))``
            and the controller uses exponent ``1/(q+1)``.
        b_err2: Optional second error weight vector (DOP853's 3rd order estimate); when set, the
            error is combined as in Hairer's DOP853: ``e5 * e5 / sqrt(e5² + 0.01 e3²)``.
        fsal: Whether the last stage equals ``f(t0 + h, y1)`` (first same as last).
        interp: Dense output matrix, shape ``(S, P)`` (see module docstring); ``None`` if the
            method has none.
        interp_order: Order of accuracy of the dense output.
        extra_c, extra_a: Extra stages for the dense output, evaluated only on steps that
            contain an output time; ``extra_a`` has shape ``(n_extra, S)`` (zero-padded).
        controller_beta: Recommended proportional gain of the PI controller for this pair
            (used when ``PIController(beta=None)``).
    """

    name: str
    c: np.ndarray
    a: np.ndarray
    b: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    error_order: int | None = None
    b_err2: np.ndarray | None = None
    fsal: bool = False
    interp: np.ndarray | None = None
    interp_order: int | None = None
    extra_c: np.ndarray | None = None
    extra_a: np.ndarray | None = None
    controller_beta: float = 0.04

    def __post_init__(self):
        for field in ("c", "a", "b", "b_err", "b_err2", "interp", "extra_c", "extra_a"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, np.asarray(value, dtype=np.float64))
        s = self.num_stages
        if self.a.shape != (s, s) or self.b.shape != (s,):
            raise ValueError(f"{self.name}: inconsistent tableau shapes")
        if np.any(np.triu(self.a) != 0):
            raise ValueError(f"{self.name}: `a` must be strictly lower triangular (explicit)")
        if self.fsal and not (np.allclose(self.a[-1], self.b) and self.c[-1] == 1):
            raise ValueError(f"{self.name}: fsal=True needs a[-1] == b and c[-1] == 1")

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def needs_f1(self) -> bool:
        """Whether ``f(t0 + h, y1)`` is one extra evaluation (adaptive, non-FSAL methods)."""
        return self.adaptive and not self.fsal

    @property
    def num_extra(self) -> int:
        return 0 if self.extra_c is None else len(self.extra_c)

    @property
    def f1_index(self) -> int:
        """Index of the stage equal to ``f(t0 + h, y1)`` in the full stage list."""
        return self.num_stages - 1 if self.fsal else self.num_stages


def hermite_interp(b: np.ndarray, f1_index: int, num_total: int) -> np.ndarray:
    """Cubic Hermite dense output (order 3) through y0, y1, f0 = k_0 and f1 = k_{f1_index}."""
    e0 = np.zeros(num_total)
    e0[0] = 1.0
    e1 = np.zeros(num_total)
    e1[f1_index] = 1.0
    bb = np.zeros(num_total)
    bb[: len(b)] = b
    # y(θ) = y0 + θ h f0 + θ²(3Δ - 2 h f0 - h f1) + θ³(-2Δ + h f0 + h f1), Δ = h Σ b k.
    return np.stack([e0, 3 * bb - 2 * e0 - e1, -2 * bb + e0 + e1], axis=1)


@dataclasses.dataclass(frozen=True)
class AbstractSolver:
    """Base class of the solvers. Instances are immutable, hashable static configuration.

    Runge-Kutta solvers set the class attribute ``tableau``; the generic explicit step of
    :class:`AbstractAdaptiveSolver` runs them.
    """

    tableau: ClassVar[ButcherTableau]

    def __repr__(self):
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive


@dataclasses.dataclass(frozen=True)
class AbstractAdaptiveSolver(AbstractSolver):
    """An adaptive solver: a step with an error estimate, and a dense output.

    The integrator only talks to a solver through :meth:`step` and :meth:`dense` (and the
    attributes below), so any one-step method with an error estimate fits: the explicit
    Runge-Kutta pairs implement both from their tableau.
    """

    @property
    def error_order(self) -> int:
        """Order ``q`` of the error estimate (local error ``O(h^(q+1))``)."""
        return self.tableau.error_order

    @property
    def controller_beta(self) -> float:
        """The recommended proportional gain of the PI controller for this method."""
        return self.tableau.controller_beta

    @property
    def dense_degree(self) -> int:
        """Degree ``P`` of the dense-output polynomial in ``θ``."""
        return self.tableau.interp.shape[1]

    @property
    def num_nodes(self) -> int:
        """Quadrature nodes per step (stages with a non-zero solution weight)."""
        return int(np.count_nonzero(self.tableau.b))

    @property
    def dense_costs_evaluations(self) -> bool:
        """Whether :meth:`dense` evaluates the vector field (Dopri8's extra stages)."""
        return self.tableau.num_extra > 0

    @property
    def nfe_per_step(self) -> int:
        """Evaluations of one step recomputed with its vector-Jacobian product (the backward
        statistics of :class:`~neuralode.CheckpointAdjoint`)."""
        tab = self.tableau
        return tab.num_stages + (0 if tab.fsal else 1) + tab.num_extra

    def step(
        self, ctx: StepContext, t: RealScalarLike, y: State, f0: FieldValue, h: RealScalarLike
    ) -> StepResult:
        """Attempt one step of size ``h > 0`` from ``(t, y)`` of ``dy/dt = direction·g(t, y)``
        (``g``, ``direction`` and the rest from ``ctx``) with first stage ``f0 = g(t, y)``.

        Stage times are ``t + c h``; state combinations use the signed step ``direction·h``
        (the sign never touches the stages, so XLA computes each stage once). With a
        quadrature channel ``f0`` is a ``(dy, dq)`` pair and the result carries the
        quadrature increment and its error.
        """
        tab, g, t_hi, quad = self.tableau, ctx.g, ctx.t_hi, ctx.quad
        hs = signed_step(h, ctx.direction)
        k0, d0 = ctx.split(f0)
        ks, ds, ys = [k0], [d0], [y]
        for i in range(1, tab.num_stages):
            yi = combine(y, hs, tab.a[i, :i], ks)
            k, d = ctx.split(g(stage_time(t, tab.c[i], h, t_hi), yi))
            ks.append(k)
            ds.append(d)
            ys.append(yi)
        y1 = combine(y, hs, tab.b, ks)
        nfe = tab.num_stages - 1
        if tab.fsal:
            f1 = (ks[-1], ds[-1]) if quad else ks[-1]
        else:
            t1 = t + h if t_hi is None else jnp.minimum(t + h, t_hi)
            f1 = g(t1, y1)
            nfe += 1
        # Error estimates in at least float32 (a half-precision estimate would round away).
        edtype = jnp.promote_types(y.dtype, jnp.float32)
        err = None if tab.b_err is None else combine(None, hs, tab.b_err, ks, edtype)
        err2 = None if tab.b_err2 is None else combine(None, hs, tab.b_err2, ks, edtype)
        q_inc = q_err = None
        if quad:
            q_inc = combine(None, hs, tab.b, ds)
            if tab.b_err is not None:
                qdtype = jnp.promote_types(ds[0].dtype, jnp.float32)
                q_err = combine(None, hs, tab.b_err, ds, qdtype)
        stages = list(ks) if tab.fsal else list(ks) + [ctx.split(f1)[0]]
        nodes = tuple((float(tab.c[i]), float(tab.b[i]), ys[i]) for i in range(tab.num_stages)
                      if tab.b[i] != 0.0)
        return StepResult(y1=y1, f1=f1, err=err, err2=err2, q_inc=q_inc, q_err=q_err,
                          stages=stages, nfe=nfe, nodes=nodes)

    def dense(
        self, ctx: StepContext, t: RealScalarLike, y: State, h: RealScalarLike, res: StepResult
    ) -> tuple[DenseCoeffs, int]:
        """``(coeffs, nfe)``: the step's dense polynomial ``y + Σ_p coeffs[p-1] θ^p``.

        Evaluates the tableau's extra dense-output stages first (Dopri8), so also returns their
        number of evaluations.
        """
        tab = self.tableau
        hs = signed_step(h, ctx.direction)
        full = list(res.stages)
        for i in range(tab.num_extra):
            row = tab.extra_a[i]
            yi = combine(y, hs, row[: len(full)], full)
            ti = stage_time(t, tab.extra_c[i], h, ctx.t_hi)
            full.append(ctx.split(ctx.g(ti, yi))[0])
        interp = tab.interp[: len(full)]
        coeffs = jnp.stack([combine(None, hs, interp[:, p], full, y.dtype)
                            for p in range(interp.shape[1])])
        return coeffs, tab.num_extra


@dataclasses.dataclass(frozen=True)
class AbstractStiffSolver(AbstractAdaptiveSolver):
    """A fifth-order stiff method (Rosenbrock or ESDIRK) with an order-4 error estimate.

    It implements :meth:`step` and :meth:`dense` itself (the dense polynomial is formed by the
    step, at no extra evaluations) and states its costs as class constants.
    """

    DENSE_DEGREE: ClassVar[int]
    NUM_NODES: ClassVar[int]
    NFE_PER_STEP: ClassVar[int]

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
        # The fifth-order pairs' value (Hairer's DOPRI5): the P term only damps growth while
        # errors rise. Measured on the four Hairer-Wanner problems at 0, 0.04 and 0.08: within
        # 3% in steps, except Kvaerno5 on Robertson (66 steps at 0.04, 79 at 0).
        return 0.04

    @property
    def dense_degree(self) -> int:
        return self.DENSE_DEGREE

    @property
    def num_nodes(self) -> int:
        return self.NUM_NODES

    @property
    def dense_costs_evaluations(self) -> bool:
        return False

    @property
    def nfe_per_step(self) -> int:
        return self.NFE_PER_STEP

    def dense(
        self, ctx: StepContext, t: RealScalarLike, y: State, h: RealScalarLike, res: StepResult
    ) -> tuple[DenseCoeffs, int]:
        """``(coeffs, 0)``: the dense polynomial was formed by the step (no evaluations)."""
        return res.stages, 0


@dataclasses.dataclass(frozen=True)
class AbstractFixedSolver(AbstractSolver):
    """A fixed-step Runge-Kutta method: steps of size ``dt0`` (at most), no error control."""
