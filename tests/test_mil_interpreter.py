"""The MIL interpreter, op by op: each op in a small program built with coremltools' MIL builder, converted
to an mlprogram, saved as an .mlpackage, run by the interpreter and compared with numpy.

Programs are converted with an empty pass pipeline so the op under test reaches the saved file as built.
"""

from __future__ import annotations

import gc
import math
import struct

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from memlora.errors import MemloraError  # noqa: E402
from memlora.mlpackage import BlobFile  # noqa: E402
from memlora.runtime.mil_interpreter import MILModel, UnsupportedOpError  # noqa: E402
from memlora.runtime.mil_ops import OPS  # noqa: E402

RNG = np.random.default_rng(0)
A = RNG.standard_normal((2, 3, 4)).astype(np.float32)
B = RNG.standard_normal((2, 3, 4)).astype(np.float32)
P = (np.abs(A) + 0.5).astype(np.float32)  # positive
U = RNG.uniform(-0.9, 0.9, (2, 3, 4)).astype(np.float32)  # inside (-1, 1)
M = RNG.standard_normal((3, 5)).astype(np.float32)
E = RNG.standard_normal((3, 3, 2)).astype(np.float32)
MASK = np.concatenate([np.zeros((2, 3, 1)), RNG.uniform(0, 1, (2, 3, 2))], -1).astype(np.float32)
IDX = np.array([[2, 0], [1, 1]], np.int32)


@pytest.fixture(scope="module", autouse=True)
def _fast_convert():
    """ct.convert calls gc.collect; freezing the objects of the imported libraries makes that cheap."""
    gc.freeze()
    yield
    gc.unfreeze()


def save(build, inputs: dict[str, np.ndarray], path, precision=None) -> MILModel:
    specs = [mb.TensorSpec(v.shape, dtype=types.numpy_type_to_builtin_type(v.dtype)) for v in inputs.values()]
    prog = mb.program(input_specs=specs, opset_version=ct.target.iOS18)(_named(build, list(inputs)))
    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=precision or ct.precision.FLOAT32,
        pass_pipeline=ct.PassPipeline.EMPTY,
    )
    model.save(str(path))
    return MILModel(path)


def _named(build, names: list[str]):
    """A function whose parameters carry the input names (the MIL builder names inputs after them)."""
    src = f"def program({', '.join(names)}):\n    return build({', '.join(names)})\n"
    scope = {"build": build}
    exec(src, scope)  # noqa: S102 - builds a signature, no user input
    return scope["program"]


def run(build, inputs, path, precision=None):
    model = save(build, inputs, path, precision)
    out = model.predict(inputs)
    return [out[name] for name in model.function().outputs]


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


erf = np.vectorize(math.erf)

def _predicate_case(op: str, test, reference):
    """A predicate op selects between two inputs (Core ML programs cannot return bool tensors)."""
    return (
        lambda x, y: mb.select(cond=test(getattr(mb, op), x, y), a=x, b=y),
        {"x": np.round(A), "y": B},
        lambda x, y: np.where(reference(x, y), x, y),
    )


def _compare(mil_op, x, y):
    return mil_op(x=x, y=mb.round(x=y))


def _logic(mil_op, x, y):
    return mil_op(x=mb.greater(x=x, y=0.0), y=mb.greater(x=y, y=0.0))


PREDICATES = {
    "equal": (_compare, lambda x, y: x == np.round(y)),
    "not_equal": (_compare, lambda x, y: x != np.round(y)),
    "greater": (_compare, lambda x, y: x > np.round(y)),
    "greater_equal": (_compare, lambda x, y: x >= np.round(y)),
    "less": (_compare, lambda x, y: x < np.round(y)),
    "less_equal": (_compare, lambda x, y: x <= np.round(y)),
    "logical_and": (_logic, lambda x, y: (x > 0) & (y > 0)),
    "logical_or": (_logic, lambda x, y: (x > 0) | (y > 0)),
    "logical_xor": (_logic, lambda x, y: (x > 0) ^ (y > 0)),
}

# plain unary ops: op -> (input, numpy reference)
UNARY = {
    "abs": (A, np.abs),
    "acos": (U, np.arccos),
    "asin": (U, np.arcsin),
    "atan": (A, np.arctan),
    "atanh": (U, np.arctanh),
    "ceil": (A, np.ceil),
    "cos": (A, np.cos),
    "cosh": (A, np.cosh),
    "erf": (A, erf),
    "exp": (A, np.exp),
    "exp2": (A, np.exp2),
    "floor": (A, np.floor),
    "log": (P, np.log),
    "round": (A * 3, np.round),
    "sign": (A, np.sign),
    "sin": (A, np.sin),
    "sinh": (A, np.sinh),
    "sqrt": (P, np.sqrt),
    "square": (A, np.square),
    "tan": (U, np.tan),
    "tanh": (A, np.tanh),
}

# op -> (program body, inputs, numpy reference); every body takes the inputs as named arguments.
CASES = {
    "add": (lambda x, y: mb.add(x=x, y=y), {"x": A, "y": B}, lambda x, y: x + y),
    "sub": (lambda x, y: mb.sub(x=x, y=y), {"x": A, "y": B}, lambda x, y: x - y),
    "mul": (lambda x, y: mb.mul(x=x, y=y), {"x": A, "y": B[0]}, lambda x, y: x * y),
    "real_div": (lambda x, y: mb.real_div(x=x, y=y), {"x": A, "y": P}, lambda x, y: x / y),
    "pow": (lambda x: mb.pow(x=x, y=np.float32(1.5)), {"x": P}, lambda x: x**1.5),
    "maximum": (lambda x, y: mb.maximum(x=x, y=y), {"x": A, "y": B}, np.maximum),
    "minimum": (lambda x, y: mb.minimum(x=x, y=y), {"x": A, "y": B}, np.minimum),
    "floor_div": (lambda x, y: mb.floor_div(x=x, y=y), {"x": A * 5, "y": P}, lambda x, y: np.floor_divide(x, y)),
    "mod": (lambda x, y: mb.mod(x=x, y=y), {"x": A * 5, "y": P}, lambda x, y: np.mod(x, y)),
    "logical_not": (lambda x: mb.select(cond=mb.logical_not(x=mb.greater(x=x, y=0.0)), a=x, b=0.0), {"x": A},
                    lambda x: np.where(x <= 0, x, 0)),
    "inverse": (lambda x: mb.inverse(x=x, epsilon=0.5), {"x": P}, lambda x: 1 / (x + 0.5)),
    "rsqrt": (lambda x: mb.rsqrt(x=x, epsilon=1e-3), {"x": P}, lambda x: 1 / np.sqrt(x + 1e-3)),
    "identity": (lambda x: mb.identity(x=x), {"x": A}, lambda x: x),
    "clip": (lambda x: mb.clip(x=x, alpha=-0.5, beta=0.7), {"x": A}, lambda x: np.clip(x, -0.5, 0.7)),
    "threshold": (lambda x: mb.threshold(x=x, alpha=0.1), {"x": A}, lambda x: np.maximum(x, 0.1)),
    "cast": (lambda x: mb.cast(x=mb.cast(x=x, dtype="int32"), dtype="fp32"), {"x": A * 4},
             lambda x: np.trunc(x)),
    "relu": (lambda x: mb.relu(x=x), {"x": A}, lambda x: np.maximum(x, 0)),
    "relu6": (lambda x: mb.relu6(x=x), {"x": A * 5}, lambda x: np.clip(x, 0, 6)),
    "sigmoid": (lambda x: mb.sigmoid(x=x), {"x": A}, sigmoid),
    "silu": (lambda x: mb.silu(x=x), {"x": A}, lambda x: x * sigmoid(x)),
    "gelu": (lambda x: (mb.gelu(x=x), mb.gelu(x=x, mode="TANH_APPROXIMATION"), mb.gelu(x=x, mode="SIGMOID_APPROXIMATION")),
             {"x": A}, lambda x: (0.5 * x * (1 + erf(x / np.sqrt(2))),
                                  0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
                                  x * sigmoid(1.702 * x))),
    "softmax": (lambda x: mb.softmax(x=x, axis=1), {"x": A}, lambda x: softmax(x, 1)),
    "softplus": (lambda x: mb.softplus(x=x), {"x": A}, lambda x: np.log1p(np.exp(x))),
    "softsign": (lambda x: mb.softsign(x=x), {"x": A}, lambda x: x / (1 + np.abs(x))),
    "leaky_relu": (lambda x: mb.leaky_relu(x=x, alpha=0.2), {"x": A}, lambda x: np.where(x >= 0, x, 0.2 * x)),
    "elu": (lambda x: mb.elu(x=x, alpha=0.5), {"x": A}, lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    "prelu": (lambda x: mb.prelu(x=x, alpha=np.array([0.1, 0.2, 0.3], np.float32)), {"x": A.reshape(1, 3, 2, 4)},
              lambda x: np.where(x >= 0, x, np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1) * x)),
    "clamped_relu": (lambda x: mb.clamped_relu(x=x, alpha=0.1, beta=0.5), {"x": A},
                     lambda x: np.minimum(np.where(x >= 0, x, 0.1 * x), 0.5)),
    "thresholded_relu": (lambda x: mb.thresholded_relu(x=x, alpha=0.3), {"x": A}, lambda x: np.where(x > 0.3, x, 0)),
    "sigmoid_hard": (lambda x: mb.sigmoid_hard(x=x, alpha=0.3, beta=0.4), {"x": A},
                     lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    "scaled_tanh": (lambda x: mb.scaled_tanh(x=x, alpha=2.0, beta=0.5), {"x": A}, lambda x: 2 * np.tanh(0.5 * x)),
    "linear_activation": (lambda x: mb.linear_activation(x=x, alpha=2.0, beta=-1.0), {"x": A}, lambda x: 2 * x - 1),
    "linear": (lambda x: mb.linear(x=x, weight=M.T.copy(), bias=np.arange(5, dtype=np.float32)), {"x": A[..., :3, :3].reshape(2, 3, 3).copy()},
               lambda x: x @ M + np.arange(5)),
    "matmul": (lambda x, y: (mb.matmul(x=x, y=y, transpose_y=True), mb.matmul(x=x, y=x, transpose_x=True)),
               {"x": A, "y": B}, lambda x, y: (x @ np.swapaxes(y, -1, -2), np.swapaxes(x, -1, -2) @ x)),
    "einsum": (lambda x, y: mb.einsum(values=(x, y), equation="chw,whr->chr"), {"x": A[:, :, :3].copy(), "y": E},
               lambda x, y: np.einsum("chw,whr->chr", x, y)),
    "layer_norm": (lambda x: mb.layer_norm(x=x, axes=[-1], gamma=np.arange(4, dtype=np.float32), beta=np.ones(4, np.float32), epsilon=1e-5),
                   {"x": A}, lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * np.arange(4) + 1),
    "l2_norm": (lambda x: mb.l2_norm(x=x, epsilon=1e-6), {"x": A}, lambda x: x / np.sqrt(np.sum(x**2))),
    "scaled_dot_product_attention": (
        lambda q, k, v, m: (mb.scaled_dot_product_attention(query=q, key=k, value=v),
                            mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=mb.less(x=m, y=0.5)),
                            mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m)),
        {"q": A, "k": B, "v": A * 2, "m": MASK},
        lambda q, k, v, m: tuple(
            softmax(q @ np.swapaxes(k, -1, -2) / 2 + mask) @ v for mask in (0, np.where(m < 0.5, 0, -np.inf), m)
        )),
    "reduce_sum": (lambda x: mb.reduce_sum(x=x, axes=[1], keep_dims=True), {"x": A}, lambda x: x.sum(1, keepdims=True)),
    "reduce_mean": (lambda x: mb.reduce_mean(x=x, axes=[-1]), {"x": A}, lambda x: x.mean(-1)),
    "reduce_max": (lambda x: mb.reduce_max(x=x, axes=[0, 2]), {"x": A}, lambda x: x.max((0, 2))),
    "reduce_min": (lambda x: mb.reduce_min(x=x), {"x": A}, lambda x: x.min()),
    "reduce_prod": (lambda x: mb.reduce_prod(x=x, axes=[2]), {"x": A}, lambda x: x.prod(2)),
    "reduce_l1_norm": (lambda x: mb.reduce_l1_norm(x=x, axes=[2]), {"x": A}, lambda x: np.abs(x).sum(2)),
    "reduce_l2_norm": (lambda x: mb.reduce_l2_norm(x=x, axes=[2]), {"x": A}, lambda x: np.sqrt((x**2).sum(2))),
    "reduce_sum_square": (lambda x: mb.reduce_sum_square(x=x, axes=[2]), {"x": A}, lambda x: (x**2).sum(2)),
    "reduce_log_sum": (lambda x: mb.reduce_log_sum(x=x, axes=[2]), {"x": P}, lambda x: np.log(x.sum(2))),
    "reduce_log_sum_exp": (lambda x: mb.reduce_log_sum_exp(x=x, axes=[2]), {"x": A}, lambda x: np.log(np.exp(x).sum(2))),
    "reduce_argmax": (lambda x: mb.reduce_argmax(x=x, axis=1), {"x": A}, lambda x: x.argmax(1)),
    "reduce_argmin": (lambda x: mb.reduce_argmin(x=x, axis=2, keep_dims=True), {"x": A}, lambda x: x.argmin(2)[..., None]),
    "reshape": (lambda x: (mb.reshape(x=x, shape=[4, -1]), mb.reshape(x=x, shape=[1, 0, -1, 0])), {"x": A},
                lambda x: (x.reshape(4, -1), x.reshape(1, 2, 3, 4))),
    "reshape_like": (lambda x, y: mb.reshape_like(x=x, ref_tensors=(y,), begins=(0,), ends=(3,), end_masks=(False,)),
                     {"x": A.reshape(6, 4), "y": B}, lambda x, y: x.reshape(2, 3, 4)),
    "transpose": (lambda x: mb.transpose(x=x, perm=[2, 0, 1]), {"x": A}, lambda x: x.transpose(2, 0, 1)),
    "expand_dims": (lambda x: mb.expand_dims(x=x, axes=[0, -1]), {"x": A}, lambda x: x[None, ..., None]),
    "squeeze": (lambda x: mb.squeeze(x=x, axes=[1]), {"x": A[:, :1]}, lambda x: x[:, 0]),
    "flatten2d": (lambda x: mb.flatten2d(x=x, axis=2), {"x": A}, lambda x: x.reshape(6, 4)),
    "shape": (lambda x: mb.cast(x=mb.shape(x=x), dtype="fp32"), {"x": A}, lambda x: np.array(x.shape, np.float32)),
    "concat": (lambda x, y: (mb.concat(values=[x, y, x], axis=1), mb.concat(values=[x, y], axis=-1, interleave=True)),
               {"x": A, "y": B}, lambda x, y: (np.concatenate([x, y, x], 1), np.stack([x, y], -1).reshape(2, 3, 8))),
    "stack": (lambda x, y: mb.stack(values=[x, y], axis=1), {"x": A, "y": B}, lambda x, y: np.stack([x, y], 1)),
    "split": (lambda x: mb.split(x=x, split_sizes=[1, 3], axis=2), {"x": A}, lambda x: (x[..., :1], x[..., 1:])),
    "tile": (lambda x: mb.tile(x=x, reps=[1, 2, 1]), {"x": A}, lambda x: np.tile(x, (1, 2, 1))),
    "slice_by_index": (
        lambda x: (mb.slice_by_index(x=x, begin=[0, 1, 0], end=[2, 3, 4], stride=[1, 1, 2]),
                   mb.slice_by_index(x=x, begin=[1, 0, -1], end=[0, 2, 0], begin_mask=[False, True, False],
                                     end_mask=[True, False, True], squeeze_mask=[False, False, True]),
                   mb.slice_by_index(x=x, begin=[0, 2, 3], end=[2, 0, 0], stride=[1, -1, -2],
                                     end_mask=[False, True, True])),
        {"x": A}, lambda x: (x[0:2, 1:3, 0:4:2], x[1:, :2, -1], x[0:2, 2::-1, 3::-2])),
    "slice_by_size": (lambda x: mb.slice_by_size(x=x, begin=[1, 0, 1], size=[1, -1, 2]), {"x": A}, lambda x: x[1:2, :, 1:3]),
    "slice_update": (lambda x, u: mb.slice_update(x=x, update=u, begin=[0, 1, 0], end=[2, 2, 4]),
                     {"x": A, "u": B[:, :1]}, lambda x, u: np.concatenate([x[:, :1], u, x[:, 2:]], 1)),
    "reverse": (lambda x: mb.reverse(x=x, axes=[0, 2]), {"x": A}, lambda x: x[::-1, :, ::-1]),
    "pad": (lambda x: (mb.pad(x=x, pad=[1, 0, 0, 2], constant_val=3.0), mb.pad(x=x, pad=[1, 1], mode="reflect"),
                       mb.pad(x=x, pad=[0, 2], mode="replicate")),
            {"x": A}, lambda x: (np.pad(x, [(0, 0), (1, 0), (0, 2)], constant_values=3.0),
                                 np.pad(x, [(0, 0), (0, 0), (1, 1)], mode="reflect"),
                                 np.pad(x, [(0, 0), (0, 0), (0, 2)], mode="edge"))),
    "select": (lambda x, y: mb.select(cond=mb.greater(x=x, y=0.0), a=x, b=y), {"x": A, "y": B},
               lambda x, y: np.where(x > 0, x, y)),
    "gather": (lambda x, i: (mb.gather(x=x, indices=i, axis=1), mb.gather(x=x, indices=i, axis=2, batch_dims=1)),
               {"x": A, "i": IDX}, lambda x, i: (x[:, i], np.stack([x[b][:, i[b]] for b in range(2)]))),
    "gather_along_axis": (lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=2), {"x": A, "i": np.tile(IDX[:, :1, None], (1, 3, 2))},
                          lambda x, i: np.take_along_axis(x, i, 2)),
    "gather_nd": (lambda x, i: mb.gather_nd(x=x, indices=i), {"x": A, "i": np.array([[1, 2], [0, 1]], np.int32)},
                  lambda x, i: x[i[:, 0], i[:, 1]]),
    "scatter": (lambda x, i, u: mb.scatter(data=x, indices=i, updates=u, axis=1, mode="update"),
                {"x": A, "i": np.array([2, 0], np.int32), "u": B[:, :2]},
                lambda x, i, u: np.concatenate([u[:, 1:2], x[:, 1:2], u[:, 0:1]], 1)),
    "scatter_along_axis": (lambda x, i, u: mb.scatter_along_axis(data=x, indices=i, updates=u, axis=2, mode="add"),
                           {"x": A, "i": np.full((2, 3, 1), 3, np.int32), "u": B[..., :1]},
                           lambda x, i, u: np.concatenate([x[..., :3], x[..., 3:] + u], 2)),
    "scatter_nd": (lambda x, i, u: mb.scatter_nd(data=x, indices=i, updates=u, mode="update"),
                   {"x": A, "i": np.array([[1, 2]], np.int32), "u": B[:1, 0]},
                   lambda x, i, u: np.where((np.arange(2)[:, None, None] == 1) & (np.arange(3)[None, :, None] == 2), u[0], x)),
    "band_part": (lambda x: (mb.band_part(x=x, lower=0, upper=-1), mb.band_part(x=x, lower=1, upper=0)), {"x": A},
                  lambda x: (np.triu(x), np.tril(x) - np.tril(x, -2))),
    "topk": (lambda x: mb.topk(x=x, k=2, axis=-1), {"x": A},
             lambda x: (-np.sort(-x, -1)[..., :2], np.argsort(-x, -1)[..., :2])),
    "argsort": (lambda x: mb.argsort(x=x, axis=1, ascending=True), {"x": A}, lambda x: np.argsort(x, 1)),
    "one_hot": (lambda i: mb.one_hot(indices=i, one_hot_vector_size=4, on_value=2.0, off_value=-1.0), {"i": IDX},
                lambda i: np.where(np.arange(4) == i[..., None], 2.0, -1.0)),
    "cumsum": (lambda x: (mb.cumsum(x=x, axis=1), mb.cumsum(x=x, axis=2, exclusive=True, reverse=True)), {"x": A},
               lambda x: (np.cumsum(x, 1), np.flip(np.cumsum(np.flip(x, 2), 2), 2) - x)),
    "fill": (lambda x: mb.add(x=x, y=mb.fill(shape=mb.shape(x=x), value=2.5)), {"x": A}, lambda x: x + 2.5),
    "fill_like": (lambda x: mb.add(x=x, y=mb.fill_like(ref_tensor=x, value=1.5)), {"x": A}, lambda x: x + 1.5),
    "range_1d": (lambda n: mb.range_1d(start=1, end=mb.reduce_max(x=n, axes=[0]), step=2), {"n": np.array([8], np.int32)}, lambda n: np.arange(1, 8, 2)),
    "non_zero": (lambda x: mb.non_zero(x=x), {"x": np.array([[0, 1], [2, 0]], np.float32)}, lambda x: np.argwhere(x)),
}
CASES.update({op: _predicate_case(op, *case) for op, case in PREDICATES.items()})
CASES.update({op: (lambda x, op=op: getattr(mb, op)(x=x), {"x": x}, ref) for op, (x, ref) in UNARY.items()})


@pytest.mark.parametrize("op", sorted(CASES))
def test_op_matches_numpy(op, tmp_path):
    build, inputs, expect = CASES[op]
    got = run(build, inputs, tmp_path / f"{op}.mlpackage")
    want = expect(*inputs.values())
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == np.shape(w)
        np.testing.assert_allclose(g.astype(np.float64), np.asarray(w, np.float64), rtol=1e-5, atol=1e-5)


def test_every_interpreter_op_is_tested():
    stateful = {"read_state", "write_state"}  # test_state_read_write
    constexpr = {op for op in OPS if op.startswith("constexpr_")}  # test_constexpr_*
    assert set(OPS) - set(CASES) - stateful - constexpr == set()


def test_fp16_program_rounds_each_op_to_fp16(tmp_path):
    """An fp16 program rounds every intermediate result, as a device does; fp32 math would not."""
    x = np.array([[1.0, 2048.0, 1e-4, 300.0]], np.float32)
    y = np.array([[1e-3, 1.0, 1.0, 300.0]], np.float32)

    def build(x, y):
        a = mb.add(x=mb.cast(x=x, dtype="fp16"), y=mb.cast(x=y, dtype="fp16"))
        return mb.cast(x=mb.mul(x=a, y=a), dtype="fp32")

    (got,) = run(build, {"x": x, "y": y}, tmp_path / "fp16.mlpackage")
    h = x.astype(np.float16) + y.astype(np.float16)
    want = (h * h).astype(np.float32)  # numpy float16 arithmetic rounds each op
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got[0, 3])  # 600^2 overflows fp16
    assert not np.array_equal(got, ((x + y) ** 2))


def test_fp16_compute_precision_from_converter(tmp_path):
    """ct.convert's fp16 compute precision inserts casts; the interpreter follows the declared types."""
    w = RNG.standard_normal((8, 4)).astype(np.float32)

    def build(x):
        return mb.softmax(x=mb.linear(x=x, weight=w), axis=-1)

    model = save(build, {"x": A[0]}, tmp_path / "c.mlpackage", precision=ct.precision.FLOAT16)
    model_ops = model.function().outputs
    (got,) = model.predict({"x": A[0]}).values()
    ref = softmax(A[0] @ w.T)
    assert list(model_ops.values())[0].name in ("fp16", "fp32")
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_state_read_write(tmp_path):
    """A KV-cache-style state: read, slice_update at a position given as input, write back."""

    @mb.program(
        input_specs=[
            mb.TensorSpec((1, 2, 1, 3), dtype=types.fp16),
            mb.TensorSpec((1,), dtype=types.int32),
            mb.StateTensorSpec((1, 2, 4, 3), dtype=types.fp16),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(k, pos, cache):
        old = mb.read_state(input=cache)
        zero = np.array([0], np.int32)
        begin = mb.concat(values=[zero, zero, pos, zero], axis=0)
        end = mb.concat(values=[np.array([1, 2], np.int32), mb.add(x=pos, y=1), np.array([3], np.int32)], axis=0)
        new = mb.slice_update(x=old, update=k, begin=begin, end=end)
        mb.coreml_update_state(state=cache, value=new)
        return mb.reduce_sum(x=mb.read_state(input=cache), axes=[2])

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                   pass_pipeline=ct.PassPipeline.EMPTY)
    m.save(str(tmp_path / "s.mlpackage"))
    model = MILModel(tmp_path / "s.mlpackage")
    state = model.make_state()
    ks = RNG.standard_normal((3, 1, 2, 1, 3)).astype(np.float16)
    for pos, k in enumerate(ks):
        (out,) = model.predict({"k": k, "pos": np.array([pos])}, state).values()
    np.testing.assert_allclose(out, ks.astype(np.float32).sum(0)[:, :, 0], rtol=2e-3, atol=2e-3)
    cache = state["cache"].value
    np.testing.assert_array_equal(cache[0, :, :3], ks[:, 0, :, 0].transpose(1, 0, 2).astype(np.float32))
    assert not cache[0, :, 3].any()
    fresh = model.make_state()
    assert not fresh["cache"].value.any()


def test_state_value_read_before_an_update_keeps_its_old_content(tmp_path):
    """Updates write into the state's array only when nothing else still holds the old value."""

    @mb.program(input_specs=[mb.TensorSpec((1, 3), dtype=types.fp16), mb.StateTensorSpec((2, 3), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def prog(k, cache):
        before = mb.read_state(input=cache)
        new = mb.slice_update(x=mb.read_state(input=cache), update=k, begin=[0, 0], end=[1, 3])
        mb.coreml_update_state(state=cache, value=new)
        return mb.sub(x=new, y=before)

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                   pass_pipeline=ct.PassPipeline.EMPTY)
    m.save(str(tmp_path / "s.mlpackage"))
    model = MILModel(tmp_path / "s.mlpackage")
    state = model.make_state()
    k = np.array([[1.0, 2.0, 3.0]], np.float32)
    (out,) = model.predict({"k": k}, state).values()
    np.testing.assert_array_equal(out, [[1, 2, 3], [0, 0, 0]])
    np.testing.assert_array_equal(state["cache"].value, [[1, 2, 3], [0, 0, 0]])


def _weight_program(compress, x: np.ndarray, w: np.ndarray, path) -> MILModel:
    def build(x):
        return mb.linear(x=x, weight=w)

    specs = [mb.TensorSpec(x.shape, dtype=types.fp32)]
    prog = mb.program(input_specs=specs, opset_version=ct.target.iOS18)(_named(build, ["x"]))
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                       compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
    model = compress(model)
    model.save(str(path))
    return MILModel(path)


def _const_ops(model: MILModel) -> set[str]:
    block = model.program.functions["main"].block_specializations["CoreML8"]
    return {op.type for op in block.operations}


W = RNG.standard_normal((64, 96)).astype(np.float32)
XW = RNG.standard_normal((2, 96)).astype(np.float32)


@pytest.mark.parametrize(
    "mode,dtype,granularity,block",
    [("linear_symmetric", "int8", "per_channel", None), ("linear", "int4", "per_block", 32),
     ("linear_symmetric", "uint4", "per_tensor", None)],
)
def test_constexpr_blockwise_shift_scale(mode, dtype, granularity, block, tmp_path):
    from coremltools.optimize import coreml as cto

    cfg = cto.OpLinearQuantizerConfig(mode=mode, dtype=dtype, granularity=granularity, block_size=block,
                                      weight_threshold=0)
    model = _weight_program(lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(global_config=cfg)),
                            XW, W, tmp_path / "q.mlpackage")
    assert "constexpr_blockwise_shift_scale" in _const_ops(model)
    (got,) = model.predict({"x": XW}).values()
    wq = _dequantized_weight(model)
    np.testing.assert_allclose(got, XW @ wq.T, rtol=1e-5, atol=1e-4)
    bits = 8 if dtype == "int8" else 4
    assert np.abs(wq - W).max() < np.abs(W).max() * 2.0 / 2**bits * (1 if block else 2)


def _dequantized_weight(model: MILModel) -> np.ndarray:
    """The linear's weight as the interpreter materialized it at load time."""
    weights = [v for v in model._cache.values() if isinstance(v, tuple) and v and np.shape(v[0]) == W.shape]
    assert len(weights) == 1
    return weights[0][0]


@pytest.mark.parametrize("granularity,nbits", [("per_tensor", 4), ("per_grouped_channel", 2), ("per_tensor", 3)])
def test_constexpr_lut_to_dense(granularity, nbits, tmp_path):
    from coremltools.optimize import coreml as cto

    cfg = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", granularity=granularity,
                                 group_size=16 if granularity != "per_tensor" else 32, weight_threshold=0)
    model = _weight_program(lambda m: cto.palettize_weights(m, cto.OptimizationConfig(global_config=cfg)),
                            XW, W, tmp_path / "p.mlpackage")
    assert "constexpr_lut_to_dense" in _const_ops(model)
    (got,) = model.predict({"x": XW}).values()
    wq = _dequantized_weight(model)
    groups = 1 if granularity == "per_tensor" else W.shape[0] // 16
    assert len(np.unique(wq)) <= groups * 2**nbits
    np.testing.assert_allclose(got, XW @ wq.T, rtol=1e-5, atol=1e-4)
    assert np.corrcoef(wq.ravel(), W.ravel())[0, 1] > 0.9


def test_constexpr_sparse_to_dense(tmp_path):
    from coremltools.optimize import coreml as cto

    sparse_w = np.where(np.abs(W) > 1.0, W, 0).astype(np.float32)
    cfg = cto.OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.0, weight_threshold=0)
    model = _weight_program(lambda m: cto.prune_weights(m, cto.OptimizationConfig(global_config=cfg)),
                            XW, sparse_w, tmp_path / "s.mlpackage")
    assert "constexpr_sparse_to_dense" in _const_ops(model)
    (got,) = model.predict({"x": XW}).values()
    np.testing.assert_allclose(got, XW @ sparse_w.T, rtol=1e-5, atol=1e-4)


def test_constexpr_ops_direct(tmp_path):
    """iOS 16 forms and constexpr_cast, written directly with the builder."""
    q = RNG.integers(0, 255, (6, 4)).astype(np.uint8)
    lut = np.linspace(-1, 1, 4).astype(np.float16)
    idx = RNG.integers(0, 4, 24)
    packed = np.packbits(((idx[:, None] >> np.arange(2)) & 1).astype(np.uint8).ravel(), bitorder="little")
    half = RNG.standard_normal((6, 4)).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec((6, 4), dtype=types.fp32)], opset_version=ct.target.iOS16)
    def prog(x):
        a = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=np.uint8(128),
                                           scale=np.float32(0.5), axis=0)
        b = mb.constexpr_lut_to_dense(indices=packed, lut=lut.astype(np.float32), shape=np.uint32([6, 4]))
        c = mb.constexpr_cast(source_val=half, output_dtype="fp32")
        return mb.add(x=mb.add(x=mb.add(x=x, y=a), y=b), y=c)

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                   compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
    m.save(str(tmp_path / "d.mlpackage"))
    (got,) = MILModel(tmp_path / "d.mlpackage").predict({"x": A[0, :, :].repeat(2, 0)}).values()
    want = A[0].repeat(2, 0) + (q.astype(np.float32) - 128) * 0.5 + lut.astype(np.float32)[idx].reshape(6, 4) + half
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---- errors -------------------------------------------------------------------------------------------


def test_unknown_op_names_the_op_and_where(tmp_path):
    def build(x):
        return mb.relu(x=mb.avg_pool(x=x, kernel_sizes=[1], strides=[1], pad_type="valid"))

    save(build, {"x": A}, tmp_path / "u.mlpackage")
    with pytest.raises(UnsupportedOpError, match=r"unsupported MIL op 'avg_pool' in function 'main', op #\d+ 'avg_pool'"):
        MILModel(tmp_path / "u.mlpackage").predict({"x": A})


def _linear_package(tmp_path):
    w = RNG.standard_normal((8, 4)).astype(np.float32)
    save(lambda x: mb.linear(x=x, weight=w), {"x": A[0]}, tmp_path / "w.mlpackage")
    return tmp_path / "w.mlpackage", tmp_path / "w.mlpackage/Data/com.apple.CoreML/weights/weight.bin"


def test_blob_reader_matches_coremltools(tmp_path):
    from coremltools.libmilstoragepython import _BlobStorageReader

    _, blob = _linear_package(tmp_path)
    ours = BlobFile(blob).read(64, 32)
    theirs = _BlobStorageReader(str(blob)).read_float_data(64)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[:100], "runs past the end|lies outside"),
        (lambda b: b[:64] + struct.pack("<I", 0x12345678) + b[68:], "bad sentinel 0x12345678"),
        (lambda b: b[:68] + struct.pack("<I", 99) + b[72:], "unknown data type code 99"),
        (lambda b: b[:72] + struct.pack("<Q", 12) + b[80:], "holds 12 bytes"),
        (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "unsupported blob storage version 7"),
    ],
)
def test_corrupt_weight_blob_is_a_clear_error(tmp_path, damage, message):
    package, blob = _linear_package(tmp_path)
    blob.write_bytes(damage(blob.read_bytes()))
    with pytest.raises(MemloraError, match=rf"weight\.bin.*({message})"):
        MILModel(package).predict({"x": A[0]})


def test_missing_weight_file_and_bad_spec(tmp_path):
    package, blob = _linear_package(tmp_path)
    blob.unlink()
    with pytest.raises(MemloraError, match="weight file named by the program is missing"):
        MILModel(package).predict({"x": A[0]})
    (package / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(MemloraError, match="cannot parse the Core ML model spec"):
        MILModel(package)
