"""Test configuration: float64 everywhere (accuracy claims are made in float64).

float32 paths are exercised explicitly by passing float32 arrays.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free the compiled programs of each test module when it ends. Every XLA:CPU executable
    holds hundreds of memory mappings; a whole suite's worth of cached programs would exceed
    the kernel's per-process limit (vm.max_map_count) and crash the compiler."""
    yield
    jax.clear_caches()
    gc.collect()
