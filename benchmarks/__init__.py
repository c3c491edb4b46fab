"""Peer comparisons of neuralode: scripts, not library API (see benchmarks/README.md).

Run them from the repository root as ``python -m benchmarks.<name>``; they import their shared
helpers as ``from benchmarks import _common as C``.

Importing the package enables 64-bit floats, so that the float64 problems are float64 (the
float32 ones cast explicitly). It happens here, before a script's own imports run (``python -m
benchmarks.x`` imports the package first), whatever order those imports are sorted in.
"""

import logging

import jax

jax.config.update("jax_enable_x64", True)
# Runtime errors raised inside compiled code (equinox's error_if) are caught and reported by
# the scripts as results; keep jax from also logging each one's traceback.
logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
