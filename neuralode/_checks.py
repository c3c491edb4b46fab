"""Argument checks shared by the whole library: one rule, one wording.

**The rule.** A value of the wrong *type* raises ``TypeError``; a value of the right type but
out of range (or of the wrong shape) raises ``ValueError``. Every message starts with the
public name that received the value (``"NeuralODE: `t1` ..."``), names the argument in
backticks, says what was expected and shows what was given.

**Where.** A value is checked once, at the public boundary where it enters (a constructor, a
public function or method); internal code trusts what the boundary let through. The helpers
return the normalised value (a Python ``int``/``float``/``bool``, a NumPy dtype, ...), so a
boundary reads ``self.width = check_int(owner, "width", width)``.

All helpers run in Python on concrete values; none of them touches traced arrays except
:func:`check_array`, which only reads static shapes and dtypes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "describe",
    "check_array",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_float_dtype",
    "check_instance",
    "check_int",
    "check_key",
    "check_real",
]


def describe(value: Any, name: str | None = None) -> str:
    """A short description of a bad value for an error message.

    Passing a class where an instance is expected (``solver=nde.Tsit5`` instead of
    ``nde.Tsit5()``) is the most common slip, so a class gets the hint that fixes it.

    Example:
        ```python
        describe(3.5)               # '3.5'
        describe(dict, "solver")    # "the class dict itself; pass an instance, solver=dict()"
        ```
    """
    if isinstance(value, type):
        call = f"{name}={value.__name__}()" if name else f"{value.__name__}()"
        return f"the class {value.__name__} itself; pass an instance, {call}"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_instance(owner: str, name: str, value: Any, cls: type | tuple[type, ...],
                   expected: str) -> Any:
    """``value`` if it is an instance of ``cls``, else ``TypeError``.

    Args:
        owner: The public name that received the value (for the message).
        name: The argument's name.
        value: The value.
        cls: The accepted class (or tuple of classes).
        expected: What to ask for, e.g. ``"a solver instance such as nde.Tsit5()"``.
    """
    if not isinstance(value, cls):
        raise TypeError(f"{owner}: `{name}` must be {expected}, got {describe(value, name)}.")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (NumPy booleans too), else ``TypeError``."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{owner}: `{name}` must be True or False, got {describe(value)}.")
    return bool(value)


def check_int(owner: str, name: str, value: Any, *, minimum: int | None = 1) -> int:
    """A Python ``int`` (NumPy integers accepted; ``bool`` is not an int here).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value < minimum`` (``minimum=None``: no lower bound).
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: `{name}` must be an int, got {describe(value)}.")
    if minimum is not None and value < minimum:
        what = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{owner}: `{name}` must be {what}, got {value!r}.")
    return int(value)


def check_real(
    owner: str,
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    nonzero: bool = False,
    interval: tuple[float, float] | None = None,
) -> float:
    """A finite real scalar as a Python ``float``.

    Accepts Python and NumPy numbers and concrete 0-d arrays (not ``bool``).

    Args:
        owner, name, value: As for :func:`check_instance`.
        positive: Require ``value > 0``.
        nonnegative: Require ``value >= 0``.
        nonzero: Require ``value != 0``.
        interval: ``(lo, hi)``: require ``lo < value < hi`` (open interval, e.g. a
            probability or a decay rate in ``(0, 1)``).

    Raises:
        TypeError: ``value`` is not a real scalar.
        ValueError: ``value`` is NaN/inf or violates a constraint.
    """
    ok_type = isinstance(value, numbers.Real | np.ndarray | jax.Array) and not isinstance(
        value, bool | np.bool_
    )
    if ok_type and not isinstance(value, numbers.Real):
        ok_type = (
            not isinstance(value, jax.core.Tracer)
            and np.ndim(value) == 0
            and (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer))
        )
    if not ok_type:
        raise TypeError(f"{owner}: `{name}` must be a real number, got {describe(value)}.")
    x = float(np.asarray(value))
    problem = None
    if not np.isfinite(x):
        problem = "finite"
    elif positive and not x > 0:
        problem = "positive"
    elif nonnegative and not x >= 0:
        problem = "non-negative"
    elif nonzero and x == 0:
        problem = "non-zero"
    elif interval is not None and not interval[0] < x < interval[1]:
        problem = f"in the open interval ({interval[0]:g}, {interval[1]:g})"
    if problem is not None:
        raise ValueError(f"{owner}: `{name}` must be {problem}, got {value!r}.")
    return x


def check_choice(owner: str, name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable
        ok = False
    if not ok:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: `{name}` must be one of {options}; got {describe(value)}.")
    return value


def check_callable(owner: str, name: str, value: Any, signature: str) -> Callable:
    """``value`` if it is callable, else ``TypeError`` showing the expected ``signature``
    (e.g. ``"field(t, y, args)"``)."""
    if not callable(value) or isinstance(value, type):
        raise TypeError(
            f"{owner}: `{name}` must be callable as {signature}, got {describe(value, name)}."
        )
    return value


def check_float_dtype(owner: str, dtype: Any, name: str = "dtype") -> np.dtype:
    """A floating-point dtype (``jnp.float32``, ``"float64"``, ...) as a NumPy dtype.

    Raises:
        TypeError: ``dtype`` is not a dtype or not a floating one.
    """
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise TypeError(
            f"{owner}: `{name}` must be a floating dtype such as jnp.float32, got "
            f"{describe(dtype)}."
        )
    return out


def check_array(
    owner: str,
    name: str,
    value: Any,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
    hint: str = "",
) -> jax.Array:
    """``value`` as a JAX array with static shape (and dtype) checks; works under ``jit``.

    Args:
        owner, name, value: As for :func:`check_instance`.
        ndim: The required number of axes (or the allowed numbers).
        shape: The required shape; ``None`` entries match any size.
        floating: Require a floating-point dtype (a ``TypeError`` otherwise).
        hint: Appended to a shape error (e.g. ``" For a batch, jax.vmap the field."``).

    Raises:
        TypeError: ``floating`` and the dtype is not floating.
        ValueError: the shape does not match.
    """
    x = jnp.asarray(value)
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{owner}: `{name}` must be floating point, got dtype {x.dtype}.")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    bad = allowed is not None and x.ndim not in allowed
    if shape is not None:
        bad = bad or x.ndim != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, x.shape, strict=False)
        )
    if bad:
        if shape is not None:
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape)
            want += ",)" if len(shape) == 1 else ")"
            what = f"shape {want}"
        else:
            what = " or ".join(str(n) for n in allowed) + " axes"
        raise ValueError(f"{owner}: `{name}` must have {what}, got shape {x.shape}.{hint}")
    return x


def check_key(owner: str, name: str, key: Any) -> jax.Array:
    """A JAX PRNG key: a typed key (``jax.random.key``) or a legacy ``uint32[2]`` key.

    Raises:
        TypeError: anything else (``None``, an int seed, ...).
    """
    ok = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)
    )
    if not ok:
        raise TypeError(
            f"{owner}: `{name}` must be a PRNG key such as jax.random.key(0), got "
            f"{describe(key)}."
        )
    return key
