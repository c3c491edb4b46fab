"""Order conditions of every Butcher tableau, checked with rooted trees (pure numpy).

A method with stage matrix ``A`` and weights ``w`` has order ``p`` iff for every rooted tree ``τ``
with ``ρ(τ) ≤ p`` nodes the elementary weight ``Φ(τ) = w · g(τ)`` equals ``1/γ(τ)``, where
``g(•) = 1`` and ``g([τ_1, ..., τ_m]) = Π_i (A g(τ_i))`` (elementwise). A dense output with
θ-dependent weights ``w(θ)`` has order ``p*`` iff ``Φ_θ(τ) = θ^ρ(τ) / γ(τ)`` for ``ρ(τ) ≤ p*``,
where ``g`` now runs over all stages the interpolant uses (including extra stages).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest

from neuralode._solvers import (
    RK4,
    Bosh3,
    ButcherTableau,
    Dopri5,
    Dopri8,
    Euler,
    Heun,
    Midpoint,
    Tsit5,
)

MAX_ORDER = 9  # Dopri8 needs order 8 and a check that order 9 fails.
TOL = 1e-10  # on |γ Φ(τ) - 1|; the coefficients are exact to ~1e-13 after rounding.
FAIL = 1e-4  # a condition counts as clearly violated above this.
THETAS = (0.1, 0.25, 0.5, 0.7, 0.9, 1.0)

Tree = tuple  # a rooted tree is the (canonically ordered) tuple of its root's subtrees


@dataclasses.dataclass(frozen=True)
class Spec:
    cls: type
    order: int
    embedded: int | None = None  # order of b - b_err
    embedded2: int | None = None  # order of b - b_err2
    interp_order: int | None = None
    fsal: bool = False


SPECS = [
    Spec(Euler, 1),
    Spec(Midpoint, 2),
    Spec(Heun, 2),
    Spec(RK4, 4),
    Spec(Bosh3, 3, embedded=2, interp_order=3, fsal=True),
    Spec(Dopri5, 5, embedded=4, interp_order=4, fsal=True),
    Spec(Tsit5, 5, embedded=4, interp_order=4, fsal=True),
    Spec(Dopri8, 8, embedded=5, embedded2=3, interp_order=7, fsal=False),
]
ADAPTIVE = [s for s in SPECS if s.embedded is not None]
IDS = [s.cls.__name__ for s in SPECS]
ADAPTIVE_IDS = [s.cls.__name__ for s in ADAPTIVE]


# ---------------------------------------------------------------------------------------------
# Rooted trees and elementary weights
# ---------------------------------------------------------------------------------------------


def _multisets(
    smaller: list[tuple[Tree, int]], remaining: int, max_index: int, prefix: Tree
) -> list[Tree]:
    """Non-increasing index sequences into ``smaller`` whose sizes sum to ``remaining``."""
    if remaining == 0:
        return [prefix]
    found: list[Tree] = []
    for i in range(max_index, -1, -1):
        tree, size = smaller[i]
        if size <= remaining:
            found.extend(_multisets(smaller, remaining - size, i, prefix + (tree,)))
    return found


@functools.cache
def trees_by_order(max_order: int) -> dict[int, list[Tree]]:
    """All rooted trees with 1..max_order nodes, each exactly once.

    A tree of order n is a multiset of subtrees with orders summing to n - 1; multisets are
    enumerated as non-increasing index sequences into the list of all smaller trees, so each
    tree has one canonical representation.
    """
    out: dict[int, list[Tree]] = {1: [()]}
    smaller: list[tuple[Tree, int]] = [((), 1)]
    for n in range(2, max_order + 1):
        out[n] = _multisets(smaller, n - 1, len(smaller) - 1, ())
        smaller.extend((t, n) for t in out[n])
    return out


@functools.cache
def rho(tree: Tree) -> int:
    return 1 + sum(rho(child) for child in tree)


@functools.cache
def gamma(tree: Tree) -> int:
    return rho(tree) * math.prod(gamma(child) for child in tree)


def stage_weights(a: np.ndarray, max_order: int) -> dict[Tree, np.ndarray]:
    """``g(τ)`` for every tree up to ``max_order`` (children are always computed first)."""
    g: dict[Tree, np.ndarray] = {}
    ag: dict[Tree, np.ndarray] = {}
    for n in range(1, max_order + 1):
        for tree in trees_by_order(max_order)[n]:
            v = np.ones(a.shape[0])
            for child in tree:
                v = v * ag[child]
            g[tree] = v
            ag[tree] = a @ v
    return g


def order_defects(a: np.ndarray, w: np.ndarray, max_order: int) -> dict[int, float]:
    """``max_τ |γ(τ) w·g(τ) - 1|`` over the trees of each order 1..max_order."""
    g = stage_weights(a, max_order)
    return {
        n: max(abs(gamma(t) * (w @ g[t]) - 1.0) for t in trees_by_order(max_order)[n])
        for n in range(1, max_order + 1)
    }


def achieved_order(a: np.ndarray, w: np.ndarray, max_order: int = MAX_ORDER) -> int:
    """Largest p such that all conditions of order ≤ p hold."""
    p = 0
    for n, defect in order_defects(a, w, max_order).items():
        if defect > TOL:
            break
        p = n
    return p


def full_stages(tab: ButcherTableau) -> tuple[np.ndarray, np.ndarray]:
    """Stage matrix and nodes of all stages the dense output uses (see ``_base.py``)."""
    s = tab.num_stages
    total = s + (1 if tab.needs_f1 else 0) + tab.num_extra
    a = np.zeros((total, total))
    c = np.zeros(total)
    a[:s, :s] = tab.a
    c[:s] = tab.c
    if tab.needs_f1:
        a[s, :s] = tab.b
        c[s] = 1.0
    if tab.num_extra:
        a[total - tab.num_extra :] = tab.extra_a
        c[total - tab.num_extra :] = tab.extra_c
    return a, c


def dense_weights(tab: ButcherTableau, theta: float) -> np.ndarray:
    powers = theta ** np.arange(1, tab.interp.shape[1] + 1)
    return tab.interp @ powers


def dense_defects(tab: ButcherTableau, theta: float, max_order: int) -> dict[int, float]:
    """``max_τ |γ(τ) Φ_θ(τ) - θ^ρ(τ)|`` over the trees of each order."""
    a, _ = full_stages(tab)
    w = dense_weights(tab, theta)
    g = stage_weights(a, max_order)
    return {
        n: max(abs(gamma(t) * (w @ g[t]) - theta**n) for t in trees_by_order(max_order)[n])
        for n in range(1, max_order + 1)
    }


def dense_order(tab: ButcherTableau, max_order: int = MAX_ORDER) -> int:
    """Largest p* such that the dense-output conditions of order ≤ p* hold at every θ."""
    worst = {n: 0.0 for n in range(1, max_order + 1)}
    for theta in THETAS:
        for n, defect in dense_defects(tab, theta, max_order).items():
            worst[n] = max(worst[n], defect)
    p = 0
    for n in range(1, max_order + 1):
        if worst[n] > TOL:
            break
        p = n
    return p


# ---------------------------------------------------------------------------------------------
# The tree machinery itself
# ---------------------------------------------------------------------------------------------


def test_tree_counts():
    # OEIS A000081: 1, 1, 2, 4, 9, 20, 48, 115, 286 rooted trees with n nodes.
    by_order = trees_by_order(MAX_ORDER)
    assert [len(by_order[n]) for n in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]
    assert sum(len(by_order[n]) for n in range(1, 9)) == 200
    for n, trees in by_order.items():
        assert len(set(trees)) == len(trees)
        assert all(rho(t) == n for t in trees)


def test_gamma_of_special_trees():
    tall: Tree = ()
    for n in range(2, 9):
        tall = (tall,)
        assert gamma(tall) == math.factorial(n)
        assert gamma(((),) * (n - 1)) == n  # bushy tree


# ---------------------------------------------------------------------------------------------
# Tableau structure
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_declared_properties(spec):
    tab = spec.cls.tableau
    assert tab.name == spec.cls.__name__
    assert tab.order == spec.order
    assert tab.fsal == spec.fsal
    assert tab.adaptive == (spec.embedded is not None)
    assert (tab.b_err2 is not None) == (spec.embedded2 is not None)
    assert tab.interp_order == spec.interp_order
    if tab.adaptive:
        assert tab.b_err.shape == (tab.num_stages,)
        assert abs(tab.b_err.sum()) < TOL  # both solutions are consistent
        assert tab.error_order is not None
    if tab.b_err2 is not None:
        assert tab.b_err2.shape == (tab.num_stages,)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_row_sums(spec):
    tab = spec.cls.tableau
    np.testing.assert_allclose(tab.a.sum(axis=1), tab.c, rtol=0, atol=1e-14)
    if tab.interp is not None:
        a, c = full_stages(tab)
        np.testing.assert_allclose(a.sum(axis=1), c, rtol=0, atol=1e-14)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_fsal_consistent(spec):
    tab = spec.cls.tableau
    s = tab.num_stages
    last_is_f1 = bool(np.allclose(tab.a[-1], tab.b, rtol=0, atol=1e-15) and tab.c[-1] == 1)
    assert tab.fsal == last_is_f1
    if tab.fsal:
        assert tab.b[-1] == 0  # f(t1, y1) cannot contribute to y1
        assert tab.f1_index == s - 1
        assert not tab.needs_f1
    elif tab.adaptive:
        assert tab.needs_f1
        assert tab.f1_index == s
    if tab.interp is not None:
        assert tab.interp.shape[0] == s + (1 if tab.needs_f1 else 0) + tab.num_extra


def test_dopri8_extra_stages_are_explicit():
    tab = Dopri8.tableau
    assert tab.num_stages == 12 and tab.num_extra == 3
    assert tab.extra_a.shape == (3, 16)
    assert tab.interp.shape == (16, 7)
    for i in range(3):
        row = 13 + i  # this extra stage's index among all stages
        assert np.all(tab.extra_a[i, row:] == 0)
        assert np.any(tab.extra_a[i, :row] != 0)


# ---------------------------------------------------------------------------------------------
# Order conditions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_order(spec):
    tab = spec.cls.tableau
    defects = order_defects(tab.a, tab.b, spec.order + 1)
    for n in range(1, spec.order + 1):
        assert defects[n] < TOL, (n, defects[n])
    assert defects[spec.order + 1] > FAIL  # exactly the claimed order, not more
    assert achieved_order(tab.a, tab.b) == spec.order


@pytest.mark.parametrize("spec", ADAPTIVE, ids=ADAPTIVE_IDS)
def test_embedded_order(spec):
    tab = spec.cls.tableau
    assert achieved_order(tab.a, tab.b - tab.b_err) == spec.embedded
    assert order_defects(tab.a, tab.b - tab.b_err, spec.embedded + 1)[spec.embedded + 1] > FAIL
    if spec.embedded2 is not None:
        assert achieved_order(tab.a, tab.b - tab.b_err2) == spec.embedded2


def test_error_orders():
    assert Bosh3.tableau.error_order == 2
    assert Dopri5.tableau.error_order == 4
    assert Tsit5.tableau.error_order == 4
    # DOP853's combined estimate e5²/sqrt(e5² + 0.01 e3²) behaves like O(h^8): exponent 1/8.
    assert Dopri8.tableau.error_order == 7


# ---------------------------------------------------------------------------------------------
# Dense output
# ---------------------------------------------------------------------------------------------

DENSE = [s for s in SPECS if s.interp_order is not None]
DENSE_IDS = [s.cls.__name__ for s in DENSE]


@pytest.mark.parametrize("spec", DENSE, ids=DENSE_IDS)
def test_dense_output_hits_y1(spec):
    tab = spec.cls.tableau
    padded = np.zeros(tab.interp.shape[0])
    padded[: tab.num_stages] = tab.b
    np.testing.assert_allclose(tab.interp.sum(axis=1), padded, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense_weights(tab, 1.0), padded, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(dense_weights(tab, 0.0), 0.0)


@pytest.mark.parametrize("spec", DENSE, ids=DENSE_IDS)
def test_dense_output_slopes_match_stages(spec):
    # y'(t0) = f(t0, y0) = k_0 and y'(t1) = f(t1, y1): the dense output is C¹ across steps.
    tab = spec.cls.tableau
    eye = np.eye(tab.interp.shape[0])
    np.testing.assert_allclose(tab.interp[:, 0], eye[0], rtol=0, atol=1e-12)
    slope_at_1 = tab.interp @ np.arange(1, tab.interp.shape[1] + 1)
    np.testing.assert_allclose(slope_at_1, eye[tab.f1_index], rtol=0, atol=1e-11)


@pytest.mark.parametrize("spec", DENSE, ids=DENSE_IDS)
def test_dense_output_order(spec):
    tab = spec.cls.tableau
    p = spec.interp_order
    for theta in THETAS:
        defects = dense_defects(tab, theta, p + 1)
        for n in range(1, p + 1):
            assert defects[n] < TOL, (theta, n, defects[n])
    # Not of order p + 1 for interior θ.
    assert max(dense_defects(tab, theta, p + 1)[p + 1] for theta in THETAS[:-1]) > FAIL
    assert dense_order(tab) == p


# ---------------------------------------------------------------------------------------------
# The checker can fail: perturbed copies lose their order
# ---------------------------------------------------------------------------------------------


def _perturbed(value: float) -> float:
    return value * (1 + 1e-6) if value != 0 else 1e-6


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_any_wrong_stage_coefficient_is_detected(spec):
    tab = spec.cls.tableau
    rows = tab.num_stages - 1 if tab.fsal else tab.num_stages  # FSAL's last row is b
    entries = [(i, j) for i in range(rows) for j in range(i) if tab.a[i, j] != 0]
    assert entries or spec.order == 1
    for i, j in entries:
        a = tab.a.copy()
        a[i, j] = _perturbed(a[i, j])
        bad = dataclasses.replace(tab, a=a)
        assert achieved_order(bad.a, bad.b) < spec.order, (i, j)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_any_wrong_weight_is_detected(spec):
    tab = spec.cls.tableau
    for j in np.flatnonzero(tab.b):
        b = tab.b.copy()
        b[j] = _perturbed(b[j])
        a = tab.a.copy()
        if tab.fsal:
            a[-1] = b
        bad = dataclasses.replace(tab, a=a, b=b)
        assert achieved_order(bad.a, bad.b) == 0, j


@pytest.mark.parametrize("spec", ADAPTIVE, ids=ADAPTIVE_IDS)
def test_wrong_error_weight_is_detected(spec):
    tab = spec.cls.tableau
    for field, order in (("b_err", spec.embedded), ("b_err2", spec.embedded2)):
        weights = getattr(tab, field)
        if weights is None:
            continue
        for j in np.flatnonzero(weights):
            w = weights.copy()
            w[j] = _perturbed(w[j])
            bad = dataclasses.replace(tab, **{field: w})
            assert achieved_order(bad.a, bad.b - getattr(bad, field)) < order, (field, j)


@pytest.mark.parametrize("spec", DENSE, ids=DENSE_IDS)
def test_wrong_dense_output_coefficient_is_detected(spec):
    tab = spec.cls.tableau
    for j, p in zip(*np.nonzero(tab.interp), strict=True):
        interp = tab.interp.copy()
        interp[j, p] = _perturbed(interp[j, p])
        bad = dataclasses.replace(tab, interp=interp)
        assert dense_order(bad) < spec.interp_order, (j, p)


def test_wrong_dopri8_extra_stage_is_detected():
    tab = Dopri8.tableau
    for i, j in zip(*np.nonzero(tab.extra_a), strict=True):
        extra_a = tab.extra_a.copy()
        extra_a[i, j] = _perturbed(extra_a[i, j])
        bad = dataclasses.replace(tab, extra_a=extra_a)
        assert dense_order(bad) < 7, (i, j)
