"""A debug view of an ExecuTorch target: the bundle's own program, run with ETDump intermediate outputs.

Nothing is re-exported: the bundle's ``.pte`` (and its ``.ptd``) is loaded with ``enable_etdump`` and a debug
buffer, so the runtime logs every kernel's output and every XNNPACK delegate call's arguments (inputs and
outputs) as it runs them. XNNPACK itself logs nothing inside a delegate, so values are visible only at
delegate boundaries -- and the exporter cuts one partition per layer (only the cache update and SDPA stay
outside, see `memlora.export.executorch_export`), so the residual stream crosses a boundary after every layer:

- the embeddings are the output of the ``embedding`` kernel (the first delegate takes them as input);
- a layer's output is the value of the embeddings' shape that a delegate call produces from the previous one
  (it computes the layer's o_proj, MLP and both residual adds, then the next layer's norm and q/k/v).

The program's execution plan (``deserialize_pte_binary``) says which value each logged argument is, so the
states are found by data flow, not by guessing from values. A program whose delegates span more than one
layer exposes fewer states; then `localise` says so instead of naming a layer.
"""

from __future__ import annotations

import importlib
import math
import tempfile
from pathlib import Path

import numpy as np

from memlora.errors import MemloraError


def _tensor(plan, index: int):
    val = plan.values[index].val
    return val if hasattr(val, "sizes") else None


def _arg_lists(plan) -> list[tuple[str, list[int]]]:
    """(kind, value indices) per instruction: kind is the kernel's operator name or ``delegate``."""
    out = []
    for ins in plan.chains[0].instructions:
        a = ins.instr_args
        if hasattr(a, "delegate_index"):
            out.append(("delegate", list(a.args)))
        elif hasattr(a, "op_index"):
            out.append((plan.operators[a.op_index].name, list(a.args)))
        else:
            out.append(("", []))
    return out


def hidden_values(plan) -> list[tuple[int, int]]:
    """(instruction, argument position) of the embeddings and each layer's output, found by data flow."""
    instructions = _arg_lists(plan)
    seen = set(plan.inputs)
    stream: list[int] = []
    where: list[tuple[int, int]] = []
    for i, (kind, args) in enumerate(instructions):
        if not stream and "embedding" in kind:
            stream.append(args[-1])  # out-variant kernels take their output last
        elif stream and kind == "delegate" and stream[-1] in args:
            shape = list(_tensor(plan, stream[0]).sizes)
            made = [k for k in args if k not in seen and _tensor(plan, k) is not None
                    and list(_tensor(plan, k).sizes) == shape]
            if len(stream) == 1 and not where:
                where.append((i, args.index(stream[0])))  # the embeddings, as this delegate's input
            if len(made) == 1:
                stream.append(made[0])
                where.append((i, args.index(made[0])))
        seen.update(args)
    if len(where) < 2:
        raise MemloraError(f"ExecuTorch method {plan.name!r}: the residual stream crosses no delegate boundary "
                           f"({len(where)} state(s) visible); cannot read per-layer outputs")
    return where


def debug_buffer_bytes(plan, tokens: int) -> int:
    """An upper bound on what ETDump logs for one call with `tokens` tokens: every tensor argument of every
    instruction, dynamic ones scaled from the planned upper bound to `tokens`. ETDump aborts the process
    when its buffer runs out, so this must not fall short."""
    from executorch.exir.schema import TensorShapeDynamism
    from executorch.exir.tensor import get_scalar_type

    bound = _tensor(plan, plan.inputs[0]).sizes[1]
    total = 1 << 20
    for _, args in _arg_lists(plan):
        for k in args:
            t = _tensor(plan, k)
            if t is None:
                total += 64
                continue
            n = math.prod(t.sizes) * get_scalar_type(t.scalar_type).itemsize
            if t.shape_dynamism != TensorShapeDynamism.STATIC:
                n = math.ceil(n * tokens / bound)
            total += n + 64
    return total


class ExecuTorchHiddenProbe:
    """``probe(tokens, adapter)`` -> hidden states of the bundle's ExecuTorch method for `adapter`."""

    def __init__(self, bundle_dir: Path, entry: dict):
        from memlora.runtime.executorch_backend import target_routes

        self.routes, self.data_files = target_routes(Path(bundle_dir), entry)
        self._plans: dict[tuple[Path, str], object] = {}

    def _plan(self, pte: Path, method: str):
        if (pte, method) not in self._plans:
            from executorch.exir._serialize._program import deserialize_pte_binary

            program = deserialize_pte_binary(pte.read_bytes()).program
            for plan in program.execution_plan:
                self._plans[pte, plan.name] = plan
        return self._plans[pte, method]

    def __call__(self, tokens: list[int], adapter: str | None) -> list[np.ndarray]:
        from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc
        from executorch.devtools.inspector._inspector_utils import inflate_runtime_output
        from executorch.runtime import Runtime

        from memlora.export.executorch_export import load_custom_ops

        if adapter not in self.routes:
            raise MemloraError(f"ExecuTorch target has no method for adapter {adapter!r}")
        route = self.routes[adapter]
        pte, method = route.program, route.method
        plan = self._plan(pte, method)
        where = hidden_values(plan)
        load_custom_ops()
        importlib.import_module("executorch.kernels.quantized")  # kernels of int8 embedding gathers

        with tempfile.TemporaryDirectory(prefix="memlora-etdump-") as tmp:
            etdump, debug = Path(tmp) / "run.etdp", Path(tmp) / "run.bin"
            # a fresh load per call: the ETDump then holds this one execution only
            program = Runtime.get().load_program(pte, data_path=self.data_files.get(pte), enable_etdump=True,
                                                 debug_buffer_size=debug_buffer_bytes(plan, len(tokens)))
            program.load_method(method).execute(route.inputs(tokens, 0))
            program.write_etdump_result_to_file(str(etdump), str(debug))
            dump, buffer = deserialize_from_etdump_flatcc(etdump.read_bytes()), bytearray(debug.read_bytes())
        logged: dict[int, list] = {}
        for run in dump.run_data:
            for event in run.events or []:
                if event.debug_event is not None:
                    logged.setdefault(event.debug_event.instruction_id, []).append(event.debug_event.debug_entry)
        instructions = _arg_lists(plan)
        states = []
        for instruction, position in where:
            entries, args = logged.get(instruction, []), instructions[instruction][1]
            if len(entries) != len(args):  # a delegate call logs each argument once, in order
                raise MemloraError(f"ETDump of {pte.name}:{method} logged {len(entries)} values for delegate call "
                                   f"#{instruction}, which has {len(args)} arguments")
            states.append(np.array(inflate_runtime_output(entries[position], buffer)[0], dtype=np.float32))
        return states
