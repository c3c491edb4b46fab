"""Equinox modules for continuous-depth models.

* Solver settings: :class:`SolveOptions`, held by every model as ``model.solve`` and changed
  with ``model.with_solve(**changes)``.
* Vector fields ``field(t, y, args)``: :class:`MLPField` (time concatenated),
  :class:`ConcatSquashField` (FFJORD), :class:`ConvField` (the paper's ODE-Net block for
  images), their layers :class:`ConcatLinear`, :class:`ConcatSquashLinear`,
  :class:`ConcatConv2d`, :class:`PlanarCNFField`, and :class:`BatchField` (a per-example
  field applied to a batch solved as one state).
* :class:`NeuralODE` (ODE-Net / RK-Net block) and :class:`Augmented` (ANODE).
* Continuous normalizing flows: :class:`CNF`, :func:`ffjord_cnf`, :func:`planar_cnf`, base
  :class:`StandardNormal`; the discrete :class:`PlanarFlow` baseline.
* RNODE regularisers: :class:`RegularisedField`, :func:`hutchinson_noise`.
* Time series: :class:`LatentODE` with the encoders :class:`RNNEncoder` and
  :class:`ODERNNEncoder`, the likelihood terms :func:`gaussian_log_likelihood`,
  :func:`diagonal_gaussian_kl`, :class:`PoissonProcessLikelihood` and
  :func:`poisson_process_log_likelihood`, the :class:`RNNBaseline`, and the batched losses
  :func:`latent_ode_loss` and :func:`rnn_baseline_loss`.

Example:
    ```python
    import jax, jax.numpy as jnp
    from neuralode import nn

    model = nn.NeuralODE(nn.MLPField(2, width=16, depth=2, key=jax.random.key(0)))
    model(jnp.ones(2)).shape  # (2,)
    loose = model.with_solve(rtol=1e-3, atol=1e-3)
    ```
"""

from ._augmented import Augmented
from ._baselines import RNNBaseline, rnn_baseline_loss
from ._cnf import CNF, StandardNormal, ffjord_cnf
from ._encoders import ODERNNEncoder, RNNEncoder
from ._fields import (
    BatchField,
    ConcatConv2d,
    ConcatLinear,
    ConcatSquashField,
    ConcatSquashLinear,
    ConvField,
    MLPField,
)
from ._latent import LatentODE, latent_ode_loss
from ._likelihoods import (
    PoissonProcessLikelihood,
    diagonal_gaussian_kl,
    gaussian_log_likelihood,
    poisson_process_log_likelihood,
)
from ._neural_ode import NeuralODE
from ._options import SolveOptions
from ._planar import PlanarCNFField, PlanarFlow, planar_cnf
from ._regularisers import RegularisedField, hutchinson_noise

__all__ = [
    "SolveOptions",
    # fields
    "BatchField",
    "ConcatConv2d",
    "ConcatLinear",
    "ConcatSquashField",
    "ConcatSquashLinear",
    "ConvField",
    "MLPField",
    "PlanarCNFField",
    # models
    "Augmented",
    "CNF",
    "NeuralODE",
    "PlanarFlow",
    "StandardNormal",
    "ffjord_cnf",
    "planar_cnf",
    # regularisers
    "RegularisedField",
    "hutchinson_noise",
    # time series
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
]
