"""JAX primitives whose rules are written on pytrees, for derivatives of every order.

Why a primitive and not ``jax.custom_vjp``: a ``custom_vjp`` function cannot be differentiated
in forward mode, and the backward rule of a ``custom_vjp`` is reverse-differentiable only if
everything it calls is; an ODE solve made of ``while_loop`` s is neither. neuralode instead
describes a solve by a few primitives (see ``neuralode._derivatives``): the solve, its forward
sensitivity (linear in the tangents), the adjoint (the sensitivity's transpose) and the second
derivatives. JAX's own machinery then composes them: ``jvp`` asks for the sensitivity,
``grad`` transposes it into the adjoint, ``grad(grad)`` and ``jvp(grad)`` differentiate the
adjoint, all under ``jit`` and ``vmap``.

A primitive is defined by a :class:`Rules` object of plain functions on pytrees (unbatched, as
if no ``vmap`` were applied). :func:`bind` flattens the arguments: array leaves are operands,
every other leaf (functions, static configuration, ``None`` for an absent tangent) travels as a
hashable parameter. Batching is generic: a ``vmap`` adds one level to the ``vmaps`` parameter
and every rule is run under the matching stack of ``jax.vmap`` s. The transpose of a batched
primitive sums the cotangent over the batch for linear inputs that were not batched (shared
parameters under ``vmap``), as JAX's own rules do.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir


@dataclasses.dataclass(frozen=True, eq=False)
class Rules:
    """The unbatched rules of one primitive.

    Attributes:
        name: For error messages.
        impl: ``impl(*args) -> out`` on pytrees of arrays.
        abstract: ``abstract(*args) -> out`` on pytrees of ``jax.ShapeDtypeStruct``.
        jvp: ``jvp(primals, tangents) -> (out, out_tangents)``. ``primals`` is the tuple of
            arguments, ``tangents`` the same structure with ``None`` for symbolic zeros; the
            returned tangents may use ``None`` (a whole subtree, too) for zeros.
        transpose: ``transpose(cts, args) -> arg_cts`` for primitives linear in some
            arguments. ``cts`` is shaped like ``out`` (``None`` for zeros); in ``args`` the
            linear inputs are ``jax.interpreters.ad.UndefinedPrimal`` leaves. Returns
            cotangents shaped like ``args`` (``None`` for no cotangent).
    """

    name: str
    impl: Callable[..., Any]
    abstract: Callable[..., Any]
    jvp: Callable[..., Any] | None = None
    transpose: Callable[..., Any] | None = None


class _Operand:
    """Marks where an operand (array leaf) sits among the static leaves."""

    __slots__ = ()

    def __repr__(self):
        return "<operand>"


_OPERAND = _Operand()
_ARRAY_TYPES = (jax.Array, jax.core.Tracer, np.ndarray, np.generic, ad.UndefinedPrimal,
                jax.ShapeDtypeStruct)


def _is_leaf(x) -> bool:
    return x is None or isinstance(x, ad.UndefinedPrimal)


def _split(tree):
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_leaf)
    operands = [x for x in leaves if isinstance(x, _ARRAY_TYPES)]
    static = tuple(_OPERAND if isinstance(x, _ARRAY_TYPES) else x for x in leaves)
    return operands, treedef, static


def _join(treedef, static, operands):
    it = iter(operands)
    return jax.tree.unflatten(treedef, [next(it) if s is _OPERAND else s for s in static])


def _lenient_flatten(treedef, tree) -> list:
    """``treedef.flatten_up_to(tree)``, where ``None`` may stand for a whole subtree."""
    template = jax.tree.unflatten(treedef, list(range(treedef.num_leaves)))
    out = [None] * treedef.num_leaves

    def visit(value, index):
        if value is not None:
            out[index] = value

    jax.tree.map(visit, tree, template, is_leaf=lambda v: v is None)
    return out


def _struct(aval):
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype)


def _unbatched(avals, vmaps):
    for axes, size in vmaps:
        avals = [a if ax is None else jex.mapped_aval(size, ax, a)
                 for a, ax in zip(avals, axes, strict=True)]
    return avals


p = jex.Primitive("neuralode_rule")
p.multiple_results = True


def bind(rules: Rules, *args):
    """Apply the primitive described by ``rules`` to ``args`` (any pytrees)."""
    operands, treedef, static = _split(args)
    operands = [jnp.asarray(x) if isinstance(x, np.ndarray | np.generic) else x for x in operands]
    structs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in operands]
    out = rules.abstract(*_join(treedef, static, structs))
    out_treedef = jax.tree.structure(out)
    flat = p.bind(*operands, rules=rules, treedef=treedef, static=static, vmaps=(),
                  out_treedef=out_treedef)
    return jax.tree.unflatten(out_treedef, flat)


_BATCHED = [0]  # how many batched rules are being traced now (nested)


def batched() -> bool:
    """Whether a rule is being traced under ``vmap`` (a batched primitive), at any depth.

    Rules are written unbatched; this lets one choose a batch-friendly formulation (e.g. the
    continuous adjoints keep the per-sample parameter adjoint out of their loop under
    ``vmap``, where it is ``batch × parameters`` wide, and in it otherwise).
    """
    return _BATCHED[0] > 0


@contextlib.contextmanager
def _tracing(vmaps) -> Iterator[None]:
    _BATCHED[0] += bool(vmaps)
    try:
        yield
    finally:
        _BATCHED[0] -= bool(vmaps)


def _vmapped(fn, vmaps, in_axes_of):
    """Wrap ``fn`` in one ``jax.vmap`` per batching level (``vmaps`` is outermost first)."""
    for depth in range(len(vmaps) - 1, -1, -1):
        axes, size = vmaps[depth]
        fn = jax.vmap(fn, in_axes=in_axes_of(axes), axis_size=size)
    return fn


def _impl(*operands, rules, treedef, static, vmaps, out_treedef):
    def run(*ops):
        return out_treedef.flatten_up_to(rules.impl(*_join(treedef, static, ops)))

    with _tracing(vmaps):
        return _vmapped(run, vmaps, lambda axes: axes)(*operands)


def _abstract_eval(*avals, rules, treedef, static, vmaps, out_treedef):
    inner = _unbatched(list(avals), vmaps)
    out = rules.abstract(*_join(treedef, static, [_struct(a) for a in inner]))
    sizes = tuple(size for _, size in vmaps)
    return [
        jax.core.ShapedArray(sizes + tuple(o.shape), o.dtype)
        for o in out_treedef.flatten_up_to(out)
    ]


def _jvp(primals, tangents, *, rules, treedef, static, vmaps, out_treedef):
    if rules.jvp is None:
        raise NotImplementedError(f"neuralode: {rules.name} has no forward-mode derivative.")
    present = tuple(type(t) is not ad.Zero for t in tangents)
    tangent_static = tuple(_OPERAND if s is _OPERAND else None for s in static)

    def run(prim, tang):
        it = iter(tang)
        tang_full = [next(it) if here else None for here in present]
        out, out_t = rules.jvp(
            _join(treedef, static, prim), _join(treedef, tangent_static, tang_full)
        )
        return out_treedef.flatten_up_to(out), _lenient_flatten(out_treedef, out_t)

    def in_axes_of(axes):
        return list(axes), [ax for ax, here in zip(axes, present, strict=True) if here]

    tang = [t for t, here in zip(tangents, present, strict=True) if here]
    with _tracing(vmaps):
        out, out_t = _vmapped(run, vmaps, in_axes_of)(list(primals), tang)
    out_t = [ad.Zero(jax.typeof(o).to_tangent_aval()) if t is None else t
             for o, t in zip(out, out_t, strict=True)]
    return out, out_t


def _transpose(cts, *args, rules, treedef, static, vmaps, out_treedef):
    if rules.transpose is None:
        raise NotImplementedError(f"neuralode: {rules.name} cannot be transposed.")
    cts = [None if type(c) is ad.Zero else c for c in cts]
    linear = [ad.is_undefined_primal(a) for a in args]
    # The aval of every linear input at each batching depth (depth 0 = as bound).
    avals = [[a.aval if lin else None for a, lin in zip(args, linear, strict=True)]]
    for axes, size in vmaps:
        avals.append([
            None if a is None else (a if ax is None else jex.mapped_aval(size, ax, a))
            for a, ax in zip(avals[-1], axes, strict=True)
        ])

    def at_depth(depth):
        if depth == len(vmaps):
            def base(cts_d, known):
                it = iter(known)
                leaves = [ad.UndefinedPrimal(avals[depth][i]) if lin else next(it)
                          for i, lin in enumerate(linear)]
                out = rules.transpose(jax.tree.unflatten(out_treedef, list(cts_d)),
                                      _join(treedef, static, leaves))
                flat = _lenient_flatten(treedef, out)
                flat = [f for f, s in zip(flat, static, strict=True) if s is _OPERAND]
                return [f if lin else None for f, lin in zip(flat, linear, strict=True)]

            return base
        inner = at_depth(depth + 1)
        axes, size = vmaps[depth]

        def lifted(cts_d, known):
            known_axes = [ax for ax, lin in zip(axes, linear, strict=True) if not lin]
            cts_axes = [None if c is None else 0 for c in cts_d]
            outs = jax.vmap(inner, in_axes=(cts_axes, known_axes), axis_size=size)(cts_d, known)
            fixed = []
            for o, lin, ax in zip(outs, linear, axes, strict=True):
                if o is None or not lin:
                    fixed.append(None)
                elif ax is None:  # an unbatched linear input: sum over the batch
                    fixed.append(jnp.sum(o, axis=0))
                else:
                    fixed.append(jnp.moveaxis(o, 0, ax))
            return fixed

        return lifted

    known = [a for a, lin in zip(args, linear, strict=True) if not lin]
    with _tracing(vmaps):
        return at_depth(0)(cts, known)


def _batch(operands, dims, *, rules, treedef, static, vmaps, out_treedef):
    size = next(x.shape[d] for x, d in zip(operands, dims, strict=True) if d is not None)
    out = p.bind(*operands, rules=rules, treedef=treedef, static=static,
                 vmaps=((tuple(dims), size),) + vmaps, out_treedef=out_treedef)
    return out, [0] * len(out)


p.def_impl(_impl)
p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[p] = _jvp
ad.primitive_transposes[p] = _transpose
batching.primitive_batchers[p] = _batch
mlir.register_lowering(p, mlir.lower_fun(_impl, multiple_results=True))


def undefined(tree) -> bool:
    """Whether any leaf of ``tree`` is a linear input being transposed."""
    return any(isinstance(x, ad.UndefinedPrimal) for x in jax.tree.leaves(tree, is_leaf=_is_leaf))


def only_undefined(cts, args):
    """Keep the cotangents of ``cts`` whose counterpart in ``args`` is a linear input."""
    return jax.tree.map(
        lambda c, a: c if isinstance(a, ad.UndefinedPrimal) else None, cts, args,
        is_leaf=_is_leaf,
    )


def has_tangent(tree) -> bool:
    """Whether ``tree`` (a tangent pytree with ``None`` for zeros) holds any tangent."""
    return any(x is not None for x in jax.tree.leaves(tree, is_leaf=lambda v: v is None))


def tangent_of(tangent, like):
    """``tangent`` shaped like ``like`` leaf by leaf, ``None`` (a symbolic zero) for every leaf
    without a tangent (``None`` may stand for a whole subtree in ``tangent``)."""
    treedef = jax.tree.structure(like)
    return jax.tree.unflatten(treedef, _lenient_flatten(treedef, tangent))


def tangent_leaves(tangent, like) -> list:
    """The leaves of ``tangent`` in the order of ``like`` 's leaves, ``None`` for absent ones."""
    return _lenient_flatten(jax.tree.structure(like), tangent)


def fill_zeros(tangent, like):
    """Replace ``None`` (symbolic zero) tangents, whole subtrees too, by zeros like ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    flat = _lenient_flatten(treedef, tangent)
    return jax.tree.unflatten(
        treedef, [jnp.zeros_like(x) if t is None else t for t, x in zip(flat, leaves, strict=True)]
    )
