"""numpy implementations of MIL ops, keyed by MIL op type.

Each op is a plain function taking the op's MIL parameters as keyword arguments and returning a value
(or a tuple for multi-output ops). Precision is not handled here: the interpreter rounds every output to
the dtype the program declares for it (fp16 outputs are rounded to fp16 after computing in fp32), so an op
only has to compute the exact result. Ops marked `exact` only move or select values and never need that
rounding. Optional parameters default to the values MIL documents.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

OPS: dict[str, Callable] = {}
EXACT: set[str] = set()
# Ops whose result depends on more than their inputs; never evaluated ahead of time.
IMPURE = {"read_state", "write_state"}


def register(*names: str, exact: bool = False):
    def wrap(fn: Callable) -> Callable:
        for name in names:
            OPS[name] = fn
            if exact:
                EXACT.add(name)
        return fn

    return wrap


def _axes(axes) -> tuple[int, ...] | None:
    return None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))


# ---- elementwise binary -------------------------------------------------------------------------------

_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
    "real_div": np.true_divide,
}

# ---- elementwise unary --------------------------------------------------------------------------------

_UNARY = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "logical_not": np.logical_not,
    "sign": np.sign,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
    "identity": lambda x: x,
}


_ELEMENTWISE_EXACT = ("maximum", "minimum", "abs", "identity", "ceil", "floor", "sign")
for _table, _wrap in ((_BINARY, lambda f: lambda x, y: f(x, y)), (_UNARY, lambda f: lambda x: f(x))):
    for _name, _fn in _table.items():
        register(_name, exact=_name in _ELEMENTWISE_EXACT)(_wrap(_fn))

_erf = np.vectorize(math.erf, otypes=[np.float64])


@register("erf")
def erf(x):
    return _erf(x)


@register("round")
def round_(x):
    return np.round(x)


@register("rsqrt")
def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + np.float32(epsilon))


@register("inverse")
def inverse(x, epsilon=1e-4):
    return 1.0 / (x + np.float32(epsilon))


@register("log")
def log(x, epsilon=1e-45):
    return np.log(x + np.float32(epsilon))


@register("clip")
def clip(x, alpha, beta):
    return np.clip(x, alpha, beta)


@register("threshold")
def threshold(x, alpha):
    return np.maximum(x, alpha)


_CAST_TYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


@register("cast")
def cast(x, dtype):
    return np.asarray(x).astype(_CAST_TYPES[str(dtype)])


# ---- activations --------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@register("relu")
def relu(x):
    return np.maximum(x, 0)


@register("relu6")
def relu6(x):
    return np.clip(x, 0, 6)


@register("sigmoid")
def sigmoid(x):
    return _sigmoid(x)


@register("silu")
def silu(x):
    return x * _sigmoid(x)


@register("gelu")
def gelu(x, mode="EXACT"):
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


@register("softmax")
def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=int(axis), keepdims=True))
    return e / np.sum(e, axis=int(axis), keepdims=True)


@register("softplus")
def softplus(x):
    return np.logaddexp(0, x)


@register("softsign")
def softsign(x):
    return x / (1 + np.abs(x))


@register("leaky_relu")
def leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, alpha * x)


@register("elu")
def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


@register("prelu")
def prelu(x, alpha):
    a = np.asarray(alpha).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, a * x)


@register("clamped_relu")
def clamped_relu(x, alpha=0.0, beta=6.0):
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


@register("thresholded_relu")
def thresholded_relu(x, alpha=1.0):
    return np.where(x > alpha, x, 0)


@register("sigmoid_hard")
def sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0, 1)


@register("scaled_tanh")
def scaled_tanh(x, alpha=1.0, beta=1.0):
    return alpha * np.tanh(beta * x)


@register("linear_activation")
def linear_activation(x, alpha=1.0, beta=0.0):
    return alpha * x + beta


# ---- linear algebra and normalization -----------------------------------------------------------------


@register("linear")
def linear(x, weight, bias=None):
    # one 2-D GEMM (BLAS) rather than numpy's loop over leading dimensions
    y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(x.shape[:-1] + (weight.shape[0],))
    return y if bias is None else y + bias


@register("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x:
        x = np.swapaxes(x, -1, -2) if x.ndim > 1 else x
    if transpose_y:
        y = np.swapaxes(y, -1, -2) if y.ndim > 1 else y
    return np.matmul(x, y)


@register("einsum")
def einsum(values, equation):
    return np.einsum(str(equation), *values)


@register("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    ax = _axes(axes)
    mean = np.mean(x, axis=ax, keepdims=True)
    var = np.mean(np.square(x - mean), axis=ax, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(epsilon))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


@register("l2_norm")
def l2_norm(x, axes=None, epsilon=1e-6):
    ax = _axes(axes) or tuple(range(-min(3, x.ndim), 0))
    return x / np.sqrt(np.maximum(np.sum(np.square(x), axis=ax, keepdims=True), np.float32(epsilon)))


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = np.matmul(query, np.swapaxes(key, -1, -2)) * np.float32(1.0 / math.sqrt(query.shape[-1]))
    if attn_mask is not None:
        if attn_mask.dtype == np.bool_:
            scores = np.where(attn_mask, scores, np.float32(-np.inf))
        else:
            scores = scores + attn_mask
    return np.matmul(softmax(scores, -1), value)


# ---- reductions ---------------------------------------------------------------------------------------


def _reduce(fn):
    def run(x, axes=None, keep_dims=False):
        return fn(x, axis=_axes(axes), keepdims=bool(keep_dims))

    return run


_REDUCTIONS = {
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.logaddexp.reduce(x, axis=axis, keepdims=keepdims),
}
for _name, _fn in _REDUCTIONS.items():
    register(_name, exact=_name in ("reduce_max", "reduce_min"))(_reduce(_fn))


def _arg_reduce(fn):
    def run(x, axis=-1, keep_dims=False, output_dtype="int32"):
        out = fn(x, axis=int(axis))
        return np.expand_dims(out, int(axis)) if keep_dims else out

    return run


register("reduce_argmax")(_arg_reduce(np.argmax))
register("reduce_argmin")(_arg_reduce(np.argmin))


# ---- shape and layout ---------------------------------------------------------------------------------


@register("reshape", exact=True)
def reshape(x, shape):
    shape = [int(s) for s in np.atleast_1d(shape)]
    if 0 in shape:  # a 0 copies the input dimension aligned from the right (iOS17 semantics)
        offset = x.ndim - len(shape)
        shape = [
            (x.shape[i + offset] if 0 <= i + offset < x.ndim else 1) if s == 0 else s for i, s in enumerate(shape)
        ]
    return np.reshape(x, shape)


@register("reshape_like", exact=True)
def reshape_like(x, ref_tensors, begins, ends, end_masks):
    shape: list[int] = []
    for ref, b, e, m in zip(ref_tensors, begins, ends, end_masks):
        shape += list(ref.shape[int(b) : None if m else int(e)])
    return np.reshape(x, shape)


@register("transpose", exact=True)
def transpose(x, perm):
    return np.transpose(x, [int(p) for p in perm])


@register("expand_dims", exact=True)
def expand_dims(x, axes):
    rank = np.ndim(x) + len(np.atleast_1d(axes))
    return np.expand_dims(x, tuple(sorted(int(a) % rank for a in np.atleast_1d(axes))))


@register("squeeze", exact=True)
def squeeze(x, axes=None):
    return np.squeeze(x, axis=_axes(axes))


@register("flatten2d", exact=True)
def flatten2d(x, axis=1):
    axis = int(axis) % (x.ndim + 1) if x.ndim else 0
    return np.reshape(x, (int(np.prod(x.shape[:axis])), -1))


@register("shape")
def shape(x):
    return np.array(np.shape(x), dtype=np.int32)


@register("concat", exact=True)
def concat(values, axis, interleave=False):
    axis = int(axis)
    values = [np.atleast_1d(v) for v in values]  # MIL concatenates scalars (shape arithmetic) as 1-vectors
    if not interleave:
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
    out_shape = list(values[0].shape)
    out_shape[axis] = sum(v.shape[axis] for v in values)
    return stacked.reshape(out_shape)


@register("stack", exact=True)
def stack(values, axis=0):
    return np.stack(values, axis=int(axis))


@register("split", exact=True)
def split(x, axis, num_splits=None, split_sizes=None):
    axis = int(axis)
    if split_sizes is not None:
        cuts = np.cumsum(np.atleast_1d(split_sizes))[:-1]
        return tuple(np.split(x, cuts, axis=axis))
    return tuple(np.split(x, int(num_splits), axis=axis))


@register("tile", exact=True)
def tile(x, reps):
    return np.tile(x, [int(r) for r in reps])


def _slices(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    """numpy index for MIL's slice_by_index / slice_update arguments."""
    rank = len(shape)
    stride = np.ones(rank, int) if stride is None else stride
    index: list = []
    for i in range(rank):
        if squeeze_mask is not None and squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        b = None if begin_mask is not None and begin_mask[i] else int(begin[i])
        e = None if end_mask is not None and end_mask[i] else int(end[i])
        index.append(slice(b, e, int(stride[i])))
    return tuple(index)


@register("slice_by_index", exact=True)
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    return x[_slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)]


@register("slice_by_size", exact=True)
def slice_by_size(x, begin, size):
    index = tuple(
        slice(int(b), None if int(s) == -1 else int(b) + int(s)) for b, s in zip(np.atleast_1d(begin), np.atleast_1d(size))
    )
    return x[index]


def slice_update_into(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """Write `update` into `x` in place (the interpreter uses this for KV-cache states)."""
    x[_slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)] = update
    return x


@register("slice_update", exact=True)
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    return slice_update_into(x.copy(), update, begin, end, stride, begin_mask, end_mask, squeeze_mask)


@register("reverse", exact=True)
def reverse(x, axes=None):
    return np.flip(x, axis=_axes(axes))


@register("pad", exact=True)
def pad(x, pad, mode="constant", constant_val=0.0):
    pad = np.asarray(pad, dtype=int).reshape(-1, 2)
    widths = [(0, 0)] * (x.ndim - len(pad)) + [tuple(p) for p in pad]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=constant_val)
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[str(mode)])


# ---- selection, gather, scatter -----------------------------------------------------------------------


@register("select", exact=True)
def select(cond, a, b):
    return np.where(cond, a, b)


def _positive(indices, size):
    indices = np.asarray(indices)
    return np.where(indices < 0, indices + size, indices)


@register("gather", exact=True)
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    axis, batch_dims = int(axis) % x.ndim, int(batch_dims)
    indices = _positive(indices, x.shape[axis])
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    return np.stack([gather(xi, ii, axis - 1, batch_dims - 1) for xi, ii in zip(x, indices)])


@register("gather_along_axis", exact=True)
def gather_along_axis(x, indices, axis=0, validate_indices=False):
    return np.take_along_axis(x, _positive(indices, x.shape[int(axis)]), axis=int(axis))


@register("gather_nd", exact=True)
def gather_nd(x, indices, batch_dims=0, validate_indices=False):
    if int(batch_dims):
        return np.stack([gather_nd(xi, ii, int(batch_dims) - 1) for xi, ii in zip(x, indices)])
    depth = indices.shape[-1]
    return x[tuple(_positive(indices[..., i], x.shape[i]) for i in range(depth))]


_SCATTER_MODES = {
    "update": None,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.true_divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter_at(out, index, updates, mode):
    fn = _SCATTER_MODES[str(mode)]
    if fn is None:
        out[index] = updates
    else:
        fn.at(out, index, updates)
    return out


@register("scatter")
def scatter(data, indices, updates, axis=0, mode="add", validate_indices=False):
    axis = int(axis) % data.ndim
    moved = np.moveaxis(data.copy(), axis, 0)
    upd = np.moveaxis(updates, axis, 0)
    _scatter_at(moved, _positive(indices, data.shape[axis]), upd, mode)
    return np.moveaxis(moved, 0, axis)


@register("scatter_along_axis")
def scatter_along_axis(data, indices, updates, axis=0, mode="add", validate_indices=False):
    axis = int(axis) % data.ndim
    out = data.copy()
    idx = list(np.indices(indices.shape, sparse=True))
    idx[axis] = _positive(indices, data.shape[axis])
    return _scatter_at(out, tuple(idx), updates, mode)


@register("scatter_nd")
def scatter_nd(data, indices, updates, mode="add", validate_indices=False):
    out = data.copy()
    index = tuple(_positive(indices[..., i], data.shape[i]) for i in range(indices.shape[-1]))
    return _scatter_at(out, index, updates, mode)


@register("band_part", exact=True)
def band_part(x, lower=-1, upper=-1):
    m = np.arange(x.shape[-2])[:, None]
    n = np.arange(x.shape[-1])[None, :]
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


@register("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"):
    axis, k = int(axis), int(k)
    order = np.argsort(x if ascending else -x, axis=axis, kind="stable")
    if k >= 0:
        order = np.take(order, np.arange(k), axis=axis)
    values = np.take_along_axis(x, order, axis=axis)
    return (values, order) if return_indices else values


@register("argsort")
def argsort(x, axis=-1, ascending=False):
    return np.argsort(x if ascending else -x, axis=int(axis), kind="stable")


@register("non_zero")
def non_zero(x):
    return np.argwhere(x)


@register("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0):
    eye = np.arange(int(one_hot_vector_size)) == np.expand_dims(indices, -1)
    out = np.where(eye, on_value, off_value)
    return np.moveaxis(out, -1, int(axis)) if int(axis) != -1 else out


@register("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False):
    axis = int(axis)
    y = np.flip(x, axis) if reverse else x
    out = np.cumsum(y, axis=axis)
    if exclusive:
        out = out - y
    return np.flip(out, axis) if reverse else out


# ---- tensor creation ----------------------------------------------------------------------------------


@register("fill")
def fill(shape, value=0.0):
    return np.full([int(s) for s in np.atleast_1d(shape)], value)


@register("fill_like")
def fill_like(ref_tensor, value=0.0):
    return np.full(np.shape(ref_tensor), value)


@register("range_1d")
def range_1d(end, start, step):
    return np.arange(start, end, step)


# ---- states (iOS 18) ----------------------------------------------------------------------------------


class StateBox:
    """The current value of one model state; functions read and replace it through state ops."""

    __slots__ = ("value",)

    def __init__(self, value: np.ndarray):
        self.value = value


@register("read_state", exact=True)
def read_state(input):  # noqa: A002 - MIL's parameter name
    return input.value


@register("write_state")
def write_state(input, data):  # noqa: A002 - MIL's parameter name (`coreml_update_state` once saved)
    input.value = data


# ---- compile-time decompression (constexpr_*) ---------------------------------------------------------


def _block_views(data: np.ndarray, small: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """`data` viewed as [n0, b0, n1, b1, ...] and the broadcast shape [n0, 1, n1, 1, ...] of per-block `small`."""
    split, block = [], []
    for full, part in zip(data.shape, small.shape):
        split += [part, full // part]
        block += [part, 1]
    return data.reshape(split), tuple(block)


@register("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    values, block = _block_views(data.astype(np.float32), scale)
    if offset is not None:
        values = values - offset.astype(np.float32).reshape(block)
    return (values * scale.reshape(block)).reshape(data.shape)


@register("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    shape = [1] * quantized_data.ndim
    axis = int(axis)
    zp, sc = np.asarray(zero_point), np.asarray(scale)
    if zp.ndim:
        zp = zp.reshape([-1 if i == axis % quantized_data.ndim else 1 for i in range(len(shape))])
    if sc.ndim:
        sc = sc.reshape([-1 if i == axis % quantized_data.ndim else 1 for i in range(len(shape))])
    return (quantized_data.astype(np.float32) - zp.astype(np.float32)) * sc


@register("constexpr_cast")
def constexpr_cast(source_val, output_dtype):
    return cast(source_val, output_dtype)


@register("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    if shape is not None:  # iOS16 form: one flat LUT, indices packed into bytes
        from memlora.mlpackage import unpack_bits

        count = int(np.prod(shape))
        bits = int(math.log2(lut.size))
        return lut[unpack_bits(np.asarray(indices, np.uint8), count, bits, False)].reshape([int(s) for s in shape])
    # iOS18 form: lut is [*blocks, 2^bits, vector]; each block of indices uses its own table
    vector = lut.shape[-1]
    rank = indices.ndim
    blocks = tuple(
        (np.arange(d) // (d // b)).reshape([-1 if i == a else 1 for i in range(rank)])
        for a, (d, b) in enumerate(zip(indices.shape, lut.shape[:rank]))
    )
    picked = lut[blocks + (indices.astype(np.intp),)]  # [*indices.shape, vector]
    if vector == 1:
        return picked[..., 0]
    axis = int(vector_axis) % rank
    picked = np.moveaxis(picked, -1, axis + 1)
    out_shape = list(indices.shape)
    out_shape[axis] *= vector
    return picked.reshape(out_shape)


@register("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    if shape is not None:  # iOS16 form: flat bitmask packed into bytes
        from memlora.mlpackage import unpack_bits

        count = int(np.prod(shape))
        bits = unpack_bits(np.asarray(mask, np.uint8), count, 1, False).astype(bool)
        out = np.zeros(count, nonzero_data.dtype)
        out[bits] = nonzero_data
        return out.reshape([int(s) for s in shape])
    out = np.zeros(mask.shape, nonzero_data.dtype)
    out[mask.astype(bool)] = nonzero_data
    return out
