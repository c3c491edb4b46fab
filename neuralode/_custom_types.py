"""Type aliases of the flat core: the adaptive loop (``_integrate``, ``_plugins``), the
controller, fixed-step integration and the solvers' steps and dense output.

Annotations only: nothing checks them at run time. Array shapes use jaxtyping's notation with
these names: ``n`` the flat state size, ``m`` the quadrature channel's size, ``n_out`` the
number of output times, ``p`` the degree of a dense-output polynomial, ``k`` the number of
event functions, ``slots`` the entries of a step record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

# Scalars. Inside the loop every time, step size, error ratio and tolerance is a 0-d array in
# the time dtype (the state's, at least float32); at the boundaries a Python number is fine.
RealScalar: TypeAlias = Float[Array, ""]
RealScalarLike: TypeAlias = Float[ArrayLike, ""] | float
IntScalar: TypeAlias = Int[Array, ""]
IntScalarLike: TypeAlias = Int[ArrayLike, ""] | int
BoolScalar: TypeAlias = Bool[Array, ""]
# The sign relating real and internal time: ``+1.0`` (a Python float, compiled in) or a
# runtime ``±1`` scalar.
Direction: TypeAlias = Float[ArrayLike, ""] | float
# ``(rtol, atol)``, as the loop hands them to a step.
Tolerances: TypeAlias = tuple[RealScalarLike, RealScalarLike]
DType: TypeAlias = Any  # a NumPy/JAX dtype or scalar type

# Flat arrays.
State: TypeAlias = Float[Array, " n"]  # the state y, and g's value dy at it
QuadState: TypeAlias = Float[Array, " m"]  # the quadrature channel q (parameter adjoint)
# What the vector field returns: ``dy``, or ``(dy, dq)`` with a quadrature channel.
FieldValue: TypeAlias = State | tuple[State, QuadState]
Times: TypeAlias = Float[Array, " n_out"]  # output (or stop) times
OutputBuffer: TypeAlias = Float[Array, "n_out n"]  # one row per output time
DenseCoeffs: TypeAlias = Float[Array, "p n"]  # y(t + θh) = y + Σ_p coeffs[p-1] θ^p
EventValues: TypeAlias = Float[Array, " k"]  # all event functions at one point
FloatSlots: TypeAlias = Float[Array, " 3"]  # LoopState.fs: [T, H, PREV]
# The loop's packed carry [y, f, T, H, PREV, h_eff, clip] (in the time dtype).
PackedFloats: TypeAlias = Float[Array, " 2*n+5"]
IntSlots: TypeAlias = Int[Array, " 10"]  # LoopState.ints: [STEPS, ..., NEXT]

# Pytrees: the parameters of a field (``args``), and loop carries with named buffers.
Args: TypeAlias = PyTree
Buffers: TypeAlias = dict[str, Array]
# A step record's carry: its buffers, its level (the stride is ``2^level``) and the accepted
# step count it starts from.
RecordCarry: TypeAlias = tuple[Buffers, IntScalar, IntScalar]

# Callables on flat arrays.
VectorField: TypeAlias = Callable[[RealScalar, State], FieldValue]  # g(τ, y), internal time
ArgsField: TypeAlias = Callable[[RealScalar, State, Args], State]  # fn(t, y, args)
EventFunction: TypeAlias = Callable[[RealScalar, State], EventValues]  # cond(τ, y)
# A stop's jump: ``jump(i, y, q) -> (y, q, result)``.
Jump: TypeAlias = Callable[[IntScalar, State, Any], tuple[State, Any, IntScalar]]
