"""Execute a Core ML mlprogram package (.mlpackage) with numpy, on any OS.

`MLModel.predict` only runs on macOS; this interpreter runs the same saved program from its spec and weight
blobs so that a converted model's numbers can be checked on Linux. It predicts what a device computes:
every op output is rounded to the dtype the program declares (an fp16 op computes in fp32 and rounds its
result to fp16; matmul-like ops accumulate in fp32, as Apple's GPU and Neural Engine do), states are read
and written with the program's state ops, and a multifunction model runs the function asked for.

Loading compiles each function once into a list of small closures: `const` ops and everything computable
from constants alone (the `constexpr_*` dequantization ops, shape arithmetic) are evaluated at load time and
cached by provenance, so functions of a multifunction model share one copy of their deduplicated weights.
An op the interpreter does not implement is reported at load time with the function, op index and output
name where it occurs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

from memlora.errors import MemloraError
from memlora.mlpackage import FP16, SUB_BYTE_BITS, BlobFile, TensorType, load_spec, parse_type, unpack_bits

from .mil_ops import EXACT, IMPURE, OPS, StateBox, slice_update_into


# Parameters that take a list of values even when the program binds a single one.
VARIADIC = {"values", "ref_tensors", "begins", "ends", "end_masks"}


class UnsupportedOpError(MemloraError):
    """The program uses an op this interpreter does not implement."""


def round_fp16(v: Any) -> np.ndarray:
    """Round to fp16, keeping the float32 container the interpreter computes in."""
    return np.asarray(v).astype(np.float16).astype(np.float32)


def coercer(t: TensorType, exact: bool) -> Callable[[Any], np.ndarray]:
    """Bring an op result to its declared dtype and check its declared shape."""
    dtype = t.numpy
    static = None if None in t.shape else t.shape
    rank = len(t.shape)

    def check(v: np.ndarray) -> np.ndarray:
        if v.shape != static if static is not None else v.ndim != rank:
            raise ValueError(f"computed shape {v.shape}, the program declares {t.shape}")
        return v

    if t.dtype == FP16 and not exact:
        return lambda v: check(round_fp16(v))
    return lambda v: check(np.asarray(v, dtype=dtype))


def storage_dtype(t: TensorType) -> np.dtype:
    """The dtype a caller sees for a value of type `t` (fp16 is returned as numpy float16)."""
    return np.dtype(np.float16) if t.dtype == FP16 else t.numpy


@dataclass
class Const:
    """A constant known at load time, loaded lazily; `key` identifies its content across functions."""

    key: tuple
    load: Callable[[], Any]


@dataclass
class CompiledFunction:
    name: str
    inputs: dict[str, TensorType]
    states: dict[str, TensorType]
    outputs: dict[str, TensorType]
    steps: list[Callable[[dict], None]]
    where: list[str]
    consts: dict[str, Any]
    types: dict[str, TensorType]
    """Every variable's declared type (inputs, states and op outputs), for reading intermediates."""


class MILModel:
    """A loaded .mlpackage whose functions can be run with `predict`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec_path, self.spec = load_spec(self.path)
        if self.spec.WhichOneof("Type") != "mlProgram":
            raise MemloraError(f"{self.spec_path}: not an mlprogram model ({self.spec.WhichOneof('Type')})")
        self.program = self.spec.mlProgram
        self.functions = tuple(self.program.functions.keys())
        self.default_function = self.spec.description.defaultFunctionName or "main"
        self._blobs: dict[str, BlobFile] = {}
        self._cache: dict[tuple, Any] = {}
        self._compiled: dict[str, CompiledFunction] = {}

    # ---- constants ------------------------------------------------------------------------------------

    def _blob_file(self, name: str) -> BlobFile:
        path = self.spec_path.parent / name.replace("@model_path/", "")
        if name not in self._blobs:
            if not path.is_file():
                raise MemloraError(f"{path}: weight file named by the program is missing")
            self._blobs[name] = BlobFile(path)
        return self._blobs[name]

    def _const(self, value, where: str) -> Const:
        t = parse_type(value.type)
        if None in t.shape:
            raise MemloraError(f"{self.spec_path}: constant with unknown shape in {where}")
        count = int(np.prod(t.shape, dtype=np.int64))
        kind = value.WhichOneof("value")
        if kind == "blobFileValue":
            ref = value.blobFileValue
            blob = self._blob_file(ref.fileName)
            key = ("blob", ref.fileName, ref.offset, t)
            return Const(key, lambda: self._typed(blob.read(ref.offset, count), t))
        tensor = value.immediateValue.tensor
        field = tensor.WhichOneof("value")
        if field == "strings":
            strings = [s for s in tensor.strings.values]
            return Const(("str", tuple(strings)), lambda: strings[0] if not t.shape else strings)
        if field == "bytes":
            raw = tensor.bytes.values
            if t.dtype in SUB_BYTE_BITS:
                bits, signed = SUB_BYTE_BITS[t.dtype]
                flat = unpack_bits(np.frombuffer(raw, np.uint8), count, bits, signed)
            else:
                flat = np.frombuffer(raw, np.float16 if t.dtype == FP16 else t.numpy)
        elif field is None:
            flat = np.zeros(0, t.numpy)
        else:
            flat = np.asarray(list(getattr(tensor, field).values))
        if flat.size != count:
            raise MemloraError(f"{self.spec_path}: constant holds {flat.size} values, its type {t.shape} in {where}")
        array = self._typed(flat, t)
        return Const(("imm", t, array.tobytes()), lambda: array)

    @staticmethod
    def _typed(flat: np.ndarray, t: TensorType) -> np.ndarray:
        return np.asarray(flat, dtype=t.numpy).reshape(t.shape)

    def _materialize(self, c: Const, keep: bool) -> Any:
        if c.key in self._cache:
            return self._cache[c.key]
        value = c.load()
        if keep:
            self._cache[c.key] = value
        return value

    # ---- compilation ----------------------------------------------------------------------------------

    def function(self, name: str | None = None) -> CompiledFunction:
        name = name or self.default_function
        if name not in self._compiled:
            if name not in self.program.functions:
                raise MemloraError(f"{self.path}: no function '{name}' (has {', '.join(self.functions)})")
            self._compiled[name] = self._compile(name)
        return self._compiled[name]

    def block(self, fname: str):
        """The MIL block (the op list) of function `fname`, as saved in the spec."""
        if fname not in self.program.functions:
            raise MemloraError(f"{self.path}: no function '{fname}' (has {', '.join(self.functions)})")
        fn = self.program.functions[fname]
        if fn.opset not in fn.block_specializations:
            raise MemloraError(f"{self.spec_path}: function '{fname}' has no block for opset {fn.opset}")
        return fn.block_specializations[fn.opset]

    def _compile(self, fname: str) -> CompiledFunction:
        fn = self.program.functions[fname]
        block = self.block(fname)
        declared = {i.name: parse_type(i.type) for i in fn.inputs}
        inputs = {n: t for n, t in declared.items() if not t.state}
        states = {n: t for n, t in declared.items() if t.state}
        consumers: dict[str, list] = {}
        for position, op in enumerate(block.operations):
            for param, arg in op.inputs.items():
                for b in arg.arguments:
                    if b.WhichOneof("binding") == "name":
                        consumers.setdefault(b.name, []).append((op, param, position))
        for out in block.outputs:
            consumers.setdefault(out, []).append((None, None, len(block.operations)))

        consts: dict[str, Const] = {}
        types: dict[str, TensorType] = dict(declared)
        producer: dict[str, Any] = {}
        steps: list[Callable[[dict], None]] = []
        where_list: list[str] = []
        for index, op in enumerate(block.operations):
            outs = [(o.name, parse_type(o.type)) for o in op.outputs]
            where = f"function '{fname}', op #{index} '{op.type}'" + (f" (output '{outs[0][0]}')" if outs else "")
            for name, t in outs:
                types[name] = t
                producer[name] = op
            if op.type == "const":
                consts[outs[0][0]] = self._const(op.attributes["val"], where)
                continue
            impl = OPS.get(op.type)
            if impl is None or len(op.blocks):
                raise UnsupportedOpError(f"{self.spec_path}: unsupported MIL op '{op.type}' in {where}")
            const_args: dict[str, Any] = {}
            var_args: list[tuple[str, Any]] = []
            for param, value in op.attributes.items():  # iOS 16 constexpr ops keep parameters here
                if param != "name":
                    const_args[param] = self._const(value, where)
            for param, arg in op.inputs.items():
                entries = []
                for b in arg.arguments:
                    if b.WhichOneof("binding") == "name":
                        entries.append(consts.get(b.name, b.name))
                    else:
                        entries.append(self._const(b.value, where))
                listed = param in VARIADIC or len(entries) != 1
                if all(isinstance(e, Const) for e in entries):
                    const_args[param] = entries if listed else entries[0]
                elif listed:
                    var_args.append((param, [e if isinstance(e, str) else (self._bind(e),) for e in entries]))
                else:
                    var_args.append((param, entries[0]))
            exact = op.type in EXACT
            coercers = [coercer(t, exact) for _, t in outs]
            if not var_args and op.type not in IMPURE:
                self._fold(op.type, impl, const_args, outs, coercers, consts, where)
                continue
            bound = {p: self._bind(v) for p, v in const_args.items()}
            if op.type == "slice_update" and self._updates_state_in_place(op, index, producer, consumers, block.operations[:index]):
                impl = slice_update_into
            steps.append(_step(impl, bound, var_args, [n for n, _ in outs], coercers))
            where_list.append(where)
        outputs = {n: types[n] for n in block.outputs}
        out_consts = {n: self._materialize(consts[n], True) for n in block.outputs if n in consts}
        return CompiledFunction(fname, inputs, states, outputs, steps, where_list, out_consts, types)

    def _bind(self, v: Const | list[Const]) -> Any:
        if isinstance(v, list):
            return [self._materialize(c, True) for c in v]
        return self._materialize(v, True)

    def _fold(self, op_type, impl, const_args, outs, coercers, consts, where) -> None:
        """Evaluate an op whose inputs are all constants once, at load time, shared by every function."""
        key = (op_type,) + tuple(
            (p, tuple(c.key for c in v) if isinstance(v, list) else v.key) for p, v in sorted(const_args.items())
        )
        if key not in self._cache:
            args = {
                p: [self._materialize(c, False) for c in v] if isinstance(v, list) else self._materialize(v, False)
                for p, v in const_args.items()
            }
            try:
                result = impl(**args)
                results = result if len(outs) > 1 else (result,)
                self._cache[key] = tuple(co(r) for co, r in zip(coercers, results))
            except MemloraError:
                raise
            except Exception as exc:
                raise MemloraError(f"{self.spec_path}: {where} failed at load time: {exc}") from exc
        for i, (name, _) in enumerate(outs):
            consts[name] = Const(key + (i,), lambda k=key, i=i: self._cache[k][i])

    @staticmethod
    def _updates_state_in_place(op, index, producer, consumers, earlier) -> bool:
        """True for the KV-cache pattern read_state -> slice_update -> write_state on one state, where
        nothing can observe the old value after the update: its other uses (and uses of views of it,
        e.g. a slice whose shape sizes the update) all run earlier, and no other earlier read of the state
        exists. Then the update may write into the state's array instead of copying it."""
        x = op.inputs["x"].arguments[0]
        if x.WhichOneof("binding") != "name" or not MILModel._dead_before(x.name, index, consumers):
            return False
        source = producer.get(x.name)
        if source is None or source.type != "read_state":
            return False
        state_name = source.inputs["input"].arguments[0].name
        for other in earlier:
            if other.type == "read_state" and other.inputs["input"].arguments[0].name == state_name:
                if other.outputs[0].name != x.name:
                    return False
        for user, param, _ in consumers.get(op.outputs[0].name, []):
            if user is not None and user.type == "write_state" and param == "data":
                if user.inputs["input"].arguments[0].name == state_name:
                    return True
        return False

    @staticmethod
    def _dead_before(name: str, index: int, consumers) -> bool:
        """Whether every use of `name` other than by op `index` itself, and of any view derived from it,
        precedes op `index` (ops in EXACT may return numpy views of their input; others return new arrays)."""
        for user, _, position in consumers.get(name, []):
            if position == index:
                continue
            if user is None or position >= index:
                return False
            if user.type in EXACT and not all(
                MILModel._dead_before(o.name, index, consumers) for o in user.outputs
            ):
                return False
        return True

    # ---- running --------------------------------------------------------------------------------------

    def make_state(self, function: str | None = None) -> dict[str, StateBox]:
        """Fresh zero-filled states for `function` (what `MLModel.make_state` gives on a device)."""
        fn = self.function(function)
        return {n: StateBox(np.zeros(t.shape, t.numpy)) for n, t in fn.states.items()}

    def predict(
        self, inputs: dict[str, Any], state: dict[str, StateBox] | None = None, function: str | None = None,
        keep: Collection[str] = (),
    ) -> dict[str, np.ndarray]:
        """Run `function` on `inputs`, reading and updating `state`; outputs in their declared dtypes.

        `keep` names intermediate variables of the program to return as well (copies, in their declared
        dtypes): what a device computed inside the program, for localising where it departs from a reference."""
        fn = self.function(function)
        unknown = [n for n in keep if n not in fn.types]
        if unknown:
            raise MemloraError(f"{self.path}: function '{fn.name}' has no variable {unknown[0]!r}")
        env: dict[str, Any] = {}
        for name, t in fn.inputs.items():
            if name not in inputs:
                raise MemloraError(f"{self.path}: function '{fn.name}' needs input '{name}'")
            env[name] = coercer(t, False)(inputs[name]) if t.dtype == FP16 else np.asarray(inputs[name], t.numpy)
        if fn.states:
            if state is None or set(state) != set(fn.states):
                raise MemloraError(f"{self.path}: function '{fn.name}' needs states {sorted(fn.states)}")
            env.update(state)
        index = 0
        try:
            for index, step in enumerate(fn.steps):
                step(env)
        except MemloraError:
            raise
        except Exception as exc:
            raise MemloraError(f"{self.spec_path}: {fn.where[index]} failed: {exc}") from exc
        env.update(fn.consts)
        folded = [n for n in keep if n not in env]
        if folded:
            raise MemloraError(f"{self.path}: variable {folded[0]!r} of function '{fn.name}' is a constant "
                               "folded at load time, not computed by a run")
        wanted = {**fn.outputs, **{n: fn.types[n] for n in keep}}
        return {n: np.asarray(env[n]).astype(storage_dtype(t)) for n, t in wanted.items()}


def _step(impl, bound: dict, var_args: list, out_names: list[str], coercers: list) -> Callable[[dict], None]:
    """One op as a closure over its constant arguments: fetch variables, compute, round, store.

    A list parameter mixes variable names (str) and constants (1-tuples holding the value)."""
    singles = [(p, v) for p, v in var_args if not isinstance(v, list)]
    lists = [(p, v) for p, v in var_args if isinstance(v, list)]

    def fetch(env: dict) -> dict:
        kw = dict(bound)
        for p, name in singles:
            kw[p] = env[name]
        for p, entries in lists:
            kw[p] = [env[e] if isinstance(e, str) else e[0] for e in entries]
        return kw

    if not out_names:

        def step(env: dict) -> None:
            impl(**fetch(env))

    elif len(out_names) == 1:
        name, co = out_names[0], coercers[0]

        def step(env: dict) -> None:
            env[name] = co(impl(**fetch(env)))

    else:

        def step(env: dict) -> None:
            for n, co, v in zip(out_names, coercers, impl(**fetch(env))):
                env[n] = co(v)

    return step
