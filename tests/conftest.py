"""Test configuration: float64 everywhere (accuracy claims are made in float64).

float32 paths are exercised explicitly by passing float32 arrays.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
