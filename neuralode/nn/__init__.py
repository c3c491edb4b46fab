"""Equinox modules for continuous-depth models.

* Vector fields ``field(t, y, args)``: :class:`MLPField` (time concatenated),
  :class:`ConcatSquashField` (FFJORD), :class:`ConvField` (the paper's ODE-Net block for
  images), their layers :class:`ConcatLinear`, :class:`ConcatSquashLinear`,
  :class:`ConcatConv2d`, and :class:`PlanarCNFField`.
* :class:`NeuralODE` (ODE-Net / RK-Net block) and :class:`Augmented` (ANODE).
* Continuous normalizing flows: :class:`CNF`, :func:`ffjord_cnf`, :func:`planar_cnf`, base
  :class:`StandardNormal`; the discrete :class:`PlanarFlow` baseline.
* RNODE regularisers: :class:`RegularisedField`, :func:`hutchinson_noise`.

Example:
    ```python
    import jax, jax.numpy as jnp
    from neuralode import nn

    model = nn.NeuralODE(nn.MLPField(2, width=16, depth=2, key=jax.random.key(0)))
    model(jnp.ones(2)).shape  # (2,)
    ```
"""

from ._augmented import Augmented
from ._cnf import CNF, StandardNormal, ffjord_cnf
from ._fields import (
    ConcatConv2d,
    ConcatLinear,
    ConcatSquashField,
    ConcatSquashLinear,
    ConvField,
    MLPField,
)
from ._latent import (
    LatentODE,
    ODERNNEncoder,
    PoissonProcessLikelihood,
    RNNBaseline,
    RNNEncoder,
    diagonal_gaussian_kl,
    gaussian_log_likelihood,
    latent_ode_loss,
    poisson_process_log_likelihood,
    rnn_baseline_loss,
)
from ._neural_ode import NeuralODE
from ._planar import PlanarCNFField, PlanarFlow, planar_cnf
from ._regularisers import RegularisedField, hutchinson_noise

__all__ = [
    "Augmented",
    "CNF",
    "ConcatConv2d",
    "ConcatLinear",
    "ConcatSquashField",
    "ConcatSquashLinear",
    "ConvField",
    "MLPField",
    "NeuralODE",
    "PlanarCNFField",
    "PlanarFlow",
    "RegularisedField",
    "StandardNormal",
    "LatentODE",
    "ODERNNEncoder",
    "PoissonProcessLikelihood",
    "RNNBaseline",
    "RNNEncoder",
    "diagonal_gaussian_kl",
    "gaussian_log_likelihood",
    "latent_ode_loss",
    "poisson_process_log_likelihood",
    "rnn_baseline_loss",
    "ffjord_cnf",
    "hutchinson_noise",
    "planar_cnf",
]
