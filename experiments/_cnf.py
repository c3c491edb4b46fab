"""What the two CNF experiments share (``density_matching``: Figure 4, ``max_likelihood``:
Figure 5): their solver settings per preset and the planar CNF's initialisation."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import neuralode as nde
from experiments import _common as C

# The CNFs' settings per preset (smoke, small, paper), part of both experiments' presets.
SOLVE_SETTINGS = {
    "schedule": ("constant", "cosine", "constant"),
    # smoke: a 3-stage solver compiles faster (the smoke run is compile-bound); paper: as the
    # paper's torchdiffeq code
    "solver": ("bosh3", "tsit5", "dopri5"),
    # exact gradients of the discrete solve: 3-5x faster per step than backsolve here; paper:
    # the paper's adjoint method
    "adjoint": ("checkpoint", "checkpoint", "backsolve"),
    "hyper_width": (16, 32, 32),
    "rtol": (1e-3, 1e-3, 1e-5), "atol": (1e-3, 1e-3, 1e-5),
    "eval_rtol": (1e-3, 1e-4, 1e-5), "eval_atol": (1e-3, 1e-4, 1e-5),
}


def training_solve(cfg) -> nde.nn.SolveOptions:
    """The CNFs' solver settings during training."""
    return C.solve_options(cfg["solver"], cfg["adjoint"], rtol=cfg["rtol"], atol=cfg["atol"])


def average_units_at_init(cnf: nde.nn.CNF) -> nde.nn.CNF:
    """Scale the initial ``u_n`` of a planar CNF by ``1/M``.

    ``PlanarCNFField`` sums its ``M`` units, so at initialisation the field (and, over a long
    time span such as ``t ∈ [0, 10]``, the flow) grows with ``M``; for large ``M`` the first
    samples land far out in the target's tails and training starts unstable and expensive
    (NFE > 100). The reference code (``torchdiffeq/examples/cnf.py``) averages the units
    instead. Scaling the hypernetwork's output rows of ``u`` by ``1/M`` gives that initial field
    while keeping the paper's (and the library's) parametrisation; training is free to grow
    ``u`` again.

    Args:
        cnf: A CNF built by ``nde.nn.planar_cnf``.

    Returns:
        The same CNF with the last hypernetwork layer's ``u`` rows scaled.
    """
    field = cnf.field
    m, d = field.width, field.dim
    last = field.hyper.layers[-1]
    scale = jnp.ones(last.bias.shape, last.bias.dtype).at[m * d : 2 * m * d].set(1.0 / m)
    new = eqx.tree_at(
        lambda c: (c.field.hyper.layers[-1].weight, c.field.hyper.layers[-1].bias),
        cnf,
        (last.weight * scale[:, None], last.bias * scale),
    )
    # guard the output layout: U scaled by 1/M, W, b and the gates unchanged
    before, after = field.parameters(0.3), new.field.parameters(0.3)
    for i, factor in enumerate((1.0, 1.0 / m, 1.0, 1.0)):
        assert np.allclose(after[i], factor * before[i], rtol=1e-5, atol=1e-7), i
    return new
