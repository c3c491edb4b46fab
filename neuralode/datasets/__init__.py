"""Datasets for the paper's experiments: spirals, toy 2-D densities, target energies, MNIST.

Everything random takes an explicit PRNG key and creates arrays in an explicit dtype (float32 by
default), so results do not depend on whether ``jax_enable_x64`` is on.

- **Spirals** (PAPER.md section 5): :func:`make_spirals`, :func:`subsample`,
  :func:`split_extrapolation`, :func:`train_test_split`.
- **Toy 2-D samplers** (FFJORD's densities): :func:`sample_toy_2d` and ``sample_<name>``.
- **Target energies** for density matching (Figure 4, Rezende & Mohamed 2015):
  :func:`target_log_density` and ``log_density_u1`` ... ``log_density_u4``.
- **MNIST**: :func:`load_mnist` (standard IDX files, or the 5000-digit subset bundled with
  neuralode in ``neuralode/datasets/data/``) and :func:`read_idx`.

One module per family: ``_spirals.py``, ``_toy2d.py``, ``_targets.py``, ``_mnist.py``; this
package re-exports their public names.

Example:
    >>> import jax
    >>> from neuralode import datasets
    >>> data = datasets.make_spirals(jax.random.key(0), num_spirals=8)
    >>> data.ys.shape
    (8, 100, 2)
    >>> obs = datasets.subsample(jax.random.key(1), data.ts, data.ys, 30)
    >>> obs.values.shape, obs.mask.shape
    ((8, 30, 2), (8, 100))
"""

from ._mnist import MNIST, MNIST_ENV_VAR, load_mnist, read_idx
from ._spirals import (
    IrregularSamples,
    Spirals,
    make_spirals,
    split_extrapolation,
    subsample,
    train_test_split,
)
from ._targets import (
    TARGET_NAMES,
    log_density_u1,
    log_density_u2,
    log_density_u3,
    log_density_u4,
    target_log_density,
)
from ._toy2d import (
    TOY_2D_NAMES,
    sample_2spirals,
    sample_8gaussians,
    sample_checkerboard,
    sample_circles,
    sample_moons,
    sample_pinwheel,
    sample_rings,
    sample_toy_2d,
)

__all__ = [
    # spirals
    "IrregularSamples",
    "Spirals",
    "make_spirals",
    "split_extrapolation",
    "subsample",
    "train_test_split",
    # toy 2-D densities
    "TOY_2D_NAMES",
    "sample_2spirals",
    "sample_8gaussians",
    "sample_checkerboard",
    "sample_circles",
    "sample_moons",
    "sample_pinwheel",
    "sample_rings",
    "sample_toy_2d",
    # target energies
    "TARGET_NAMES",
    "log_density_u1",
    "log_density_u2",
    "log_density_u3",
    "log_density_u4",
    "target_log_density",
    # MNIST
    "MNIST",
    "MNIST_ENV_VAR",
    "load_mnist",
    "read_idx",
]
