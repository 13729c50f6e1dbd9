"""The ExecuTorch target: the export-friendly decoder lowered to XNNPACK, with a mutable KV cache.

Why ExecuTorch's LLM ops: ``torch.ops.llama.update_cache`` writes new keys/values into the cache buffer in
place and ``torch.ops.llama.custom_sdpa`` attends over positions ``<= start + i`` of it without building a
mask or repeating KV heads -- the fast path of ExecuTorch's own LLM export. They want the cache laid out
``[1, max_context, kv_heads, head_dim]``, so the module here owns its caches in that layout and plugs the
ops into the decoder through its ``run_layers(attend=...)`` building block.

Program interface (ExecuTorch LLM runner convention, plus a gate for stacked adapters)::

    forward(tokens [1, T] int64, input_pos [1] int64 = start[, gate [n * rank] float]) -> logits [1, vocab]

``T`` is dynamic (1 .. max_context): one method serves prefill and decode. Only the last position's
logits come out: all positions would be a ``T x vocab`` output planned for ``T = max_context`` (400 MB
at 2048 x 49152). Constant methods give the runner its metadata (``get_max_seq_len``, ``get_bos_id``,
``get_eos_ids``, ``use_kv_cache``, ``get_vocab_size``, ...).

Modes:
- *separable*: ONE program ``model.pte`` with ONE method, ``forward``, that holds every adapter at once:
  each LoRA slot stacks the adapters' rank blocks side by side (`memlora.export.lora.stack_adapters`) and
  the third input, the gate, turns on the active adapter's block (zeros: the base model). Switching
  adapters = another gate: one method means one set of XNNPACK delegates, so the base weights are packed
  once however many adapters a session runs (a method per adapter packed its own copy of them when first
  run), and lowering runs once. The manifest's ``gates`` give the gate width and each adapter's span. The
  base weights are written to ``foundation.ptd`` (program-data separation), the LoRA weights stay in the
  ``.pte``. A decode step computes the stacked low-rank branch (n x rank columns, n - 1 blocks gated to
  zero): small next to the base matmuls at rank 8.
- *merged*: one self-contained program per adapter (``<adapter>.pte``, LoRA folded into the weights
  before quantization) plus ``base.pte``; each runs on its own, e.g. under ExecuTorch's LLM runner (which
  passes two inputs, so it cannot drive a separable program). The programs are independent, so they are
  exported in parallel processes, one per core (`run_merged`).

Every linear must be delegated to XNNPACK: the export fails if any linear/matmul stays portable, and
the manifest records delegated/total nodes per method and the ops left outside delegates.

One XNNPACK partition per layer: ExecuTorch rebuilds the graph module for every partition while lowering
and calls each delegate once per step, so ops that XNNPACK refuses between two delegated regions cost
twice. The module is written so that only the cache update and attention stay outside: RMSNorm's mean is
a linear (`LinearMeanRMSNorm`), RoPE's half rotation is a linear (`rotate_half_matrix`) and reshapes use
``-1`` rather than the symbolic length (XNNPACK refuses a mean over a 3-D tensor's last dim, slices and
symbolic reshapes). On the 30-layer default model this took each program from 123 delegates to 32.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memlora.errors import MemloraError
from memlora.recipe import QuantRecipe

from . import executorch_quant
from .calibrate import Calibration, load_decoder
from .bundle import eos_ids
from .target import Exporter, Stage, TargetRequest
from .decoder import Decoder, DecoderConfig, LoraLinear, LoraSlots, RMSNorm
from .lora import Adapter, fill_slots, stack_adapters, unify_slots

TARGET = "executorch"
BASE_METHOD = "forward"
FOUNDATION = "foundation"
LINEAR_OPS = ("linear", "mm", "addmm", "bmm", "matmul", "_weight_int8pack_mm")


def load_custom_ops() -> None:
    """Register ``torch.ops.llama.*`` (export) and their kernels (runtime); needed before export and load."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


class LinearMeanRMSNorm(nn.Module):
    """RMSNorm with the mean of squares as a linear (bias = eps). XNNPACK does not delegate a mean over the
    last dim of a 3-D tensor; left outside, it cut every layer into two more partitions."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        size = norm.weight.shape[0]
        self.weight = norm.weight
        self.register_buffer("mean_weight", torch.full((1, size), 1.0 / size), persistent=False)
        self.register_buffer("eps", torch.tensor([norm.eps]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(nn.functional.linear(x * x, self.mean_weight, self.eps)) * self.weight


def rotate_half_matrix(head_dim: int) -> torch.Tensor:
    """``W`` with ``x @ W.T == cat(-x[half:], x[:half])``: RoPE's rotation as a linear XNNPACK delegates
    (slices of a dynamic-length tensor stay outside it)."""
    half = head_dim // 2
    w = torch.zeros(head_dim, head_dim)
    w[torch.arange(half), torch.arange(half) + half] = -1.0
    w[torch.arange(half) + half, torch.arange(half)] = 1.0
    return w


class EtDecoder(nn.Module):
    """The decoder with ExecuTorch's cache-update and SDPA ops over caches it owns; the exported module.

    The output head is an untied copy of the embedding matrix so it can be quantized as a linear while
    the embedding stays a gather."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        c = decoder.config
        self.decoder = decoder
        self.max_context = c.max_context
        shape = (1, c.max_context, c.num_kv_heads, c.head_dim)
        for i, layer in enumerate(decoder.layers):
            # the decoder's own [1, kv, C, D] caches are not used here; keep them out of the program
            layer.self_attn.k_cache = torch.zeros(0)
            layer.self_attn.v_cache = torch.zeros(0)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)
            layer.input_layernorm = LinearMeanRMSNorm(layer.input_layernorm)
            layer.post_attention_layernorm = LinearMeanRMSNorm(layer.post_attention_layernorm)
        decoder.norm = LinearMeanRMSNorm(decoder.norm)
        self.register_buffer("rotate_half", rotate_half_matrix(c.head_dim), persistent=False)
        head = decoder.embed_tokens.weight if c.tie_embeddings else decoder.lm_head.weight
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(head)
        self.lm_head.weight.requires_grad_(False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        dec = self.decoder
        t = tokens.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + t <= self.max_context)
        # [T, 1, D]: broadcast over heads without a per-layer unsqueeze
        cos = dec.rope_cos.narrow(0, start, t).unsqueeze(1)
        sin = dec.rope_sin.narrow(0, start, t).unsqueeze(1)

        def rope(x):
            return x * cos + nn.functional.linear(x, self.rotate_half) * sin

        def attend(i: int, q, k, v):
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            torch.ops.llama.update_cache(rope(k), k_cache, start)
            torch.ops.llama.update_cache(v, v_cache, start)
            out = torch.ops.llama.custom_sdpa(rope(q), k_cache, v_cache, start, None, 0.0, True)
            return out.reshape(1, -1, out.shape[2] * out.shape[3])

        x, _ = dec.run_layers(dec.embed(tokens), None, None, attend, gate=gate)  # RoPE in `attend`
        return self.lm_head(dec.norm(x[:, -1, :]))


def is_base_linear(module: nn.Module) -> bool:
    """Projections and the output head are quantized; LoRA slots are parameters, never selected."""
    return isinstance(module, (LoraLinear, nn.Linear))


def _finish(decoder: Decoder, recipe: QuantRecipe) -> EtDecoder:
    for m in decoder.lora_modules().values():
        m.to_linear_layout()  # one XNNPACK partition per run of linears, not one per LoRA matmul
    module = EtDecoder(decoder).eval()
    executorch_quant.quantize_model(module, recipe, is_base_linear)
    return module


def build_module(model_dir: Path, max_context: int, adapter: Adapter | None, slots, merge: bool,
                 recipe: QuantRecipe, calibration: Calibration | None = None) -> EtDecoder:
    """The decoder of one merged program: with `adapter` in its LoRA slots (or folded in when `merge`),
    quantized (from the calibrated base weights, if given)."""
    decoder = load_decoder(model_dir, max_context, slots if adapter is not None else None, calibration)
    if adapter is not None:
        fill_slots(decoder, adapter)
        if merge:
            decoder = decoder.merged()
    return _finish(decoder, recipe)


def build_stacked(model_dir: Path, max_context: int, adapters: dict[str, Adapter], slots, recipe: QuantRecipe,
                  calibration: Calibration | None = None) -> tuple[EtDecoder, dict[str, tuple[int, int]]]:
    """The decoder of a separable program: every adapter stacked in its slots behind a gate input (see
    `memlora.export.lora.stack_adapters`), quantized (from the calibrated base weights, if given); and each
    adapter's span of the gate."""
    decoder = load_decoder(model_dir, max_context, slots, calibration)
    spans = stack_adapters(decoder, adapters)
    module = _finish(decoder, recipe)
    module.gate_width = slots.rank * len(adapters)
    return module, spans


def export_program(module: EtDecoder):
    """torch.export with a dynamic sequence length (strict: the non-strict path fails in lowering); a stacked
    module (`build_stacked`) takes its gate as a third input."""
    load_custom_ops()
    t = torch.export.Dim("T", min=1, max=module.max_context)
    args = (torch.zeros(1, 2, dtype=torch.int64), torch.tensor([0]))
    width = getattr(module, "gate_width", 0)
    if width:
        args += (torch.zeros(width),)
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=({1: t}, None, *[None] * bool(width)), strict=True)


def tag_foundation(program) -> None:
    """Mark base weights for the shared ``.ptd`` (XNNPACK reads ``delegate_constant_tag``); LoRA stays in."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and "lora" not in node.name:
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = FOUNDATION


def foundation_tag(node) -> str | None:
    """`external_constants` tag for constants XNNPACK does not own (the embedding table)."""
    return None if "lora" in node.name else FOUNDATION


def runner_metadata(config, eos_ids: list[int]) -> dict:
    """Constant methods ExecuTorch's LLM runner reads (Android/iOS ``TextLLMRunner``)."""
    return {
        "get_max_seq_len": config.max_context,
        "get_max_context_len": config.max_context,
        "get_vocab_size": config.vocab_size,
        "get_bos_id": config.bos_token_id if config.bos_token_id is not None else -1,
        "get_eos_ids": eos_ids,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_n_layers": config.num_layers,
    }


def op_name(node) -> str:
    """``mm`` for ``aten.mm.default`` (edge and ATen overloads print alike)."""
    match = re.search(r"(\w+)\.(\w+)\.(\w+)", str(node.target))
    return match.group(2) if match else getattr(node.target, "__name__", str(node.target))


def delegation(edge, method: str) -> dict:
    """Delegated/total nodes of one lowered method and the ops left outside delegates (they run on
    ExecuTorch's own kernels, one call each per step); a linear left there is an error."""
    from executorch.devtools.backend_debug import get_delegation_info

    gm = edge.exported_program(method).graph_module
    info = get_delegation_info(gm)
    portable = [n for n in gm.graph.nodes if n.op == "call_function" and op_name(n) in LINEAR_OPS]
    if portable:
        raise MemloraError(
            f"ExecuTorch export: method {method!r} keeps {len(portable)} linear op(s) outside XNNPACK "
            f"(first: {portable[0].target}); refusing a slow, partially delegated program"
        )
    total = info.num_delegated_nodes + info.num_non_delegated_nodes
    ops = Counter(op_name(n) for n in gm.graph.nodes if n.op == "call_function")
    outside = {op: count for op, count in ops.most_common() if op not in ("executorch_call_delegate", "getitem")}
    return {"delegated_nodes": info.num_delegated_nodes, "total_nodes": total,
            "delegates": info.num_delegated_subgraphs, "outside_delegates": outside}


def lower(programs: dict, metadata: dict, separate: bool, stage: Stage = lambda s: None):
    """XNNPACK lowering of every method together, then the ExecuTorch program (cache shared across
    methods; base weights external when `separate`). Returns (executorch program, delegation per method)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    if separate:
        for program in programs.values():
            tag_foundation(program)
    stage("executorch: decompose, partition and lower to XNNPACK")
    # as ExecuTorch's own LLM export does: no IR re-verification after every pass, no dim-order ops (every
    # tensor here is contiguous); `delegation` below still checks what was delegated
    config = EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True)
    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()], constant_methods=metadata,
                                       compile_config=config)
    stats = {m: delegation(edge, m) for m in programs}
    stage("executorch: memory planning and serialization")
    et = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=True),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        external_constants=foundation_tag if separate else False,
    ))
    return et, stats


def write_program(et, path: Path) -> list[Path]:
    """Write the ``.pte`` (and any ``.ptd`` data files beside it) via a temporary name; returns new files."""
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("wb") as fh:
        et.write_to_file(fh)
    os.replace(tmp, path)
    before = set(path.parent.glob("*.ptd"))
    et.write_tensor_data_to_file(str(path.parent))
    return [path, *sorted(set(path.parent.glob("*.ptd")) - before)]


@dataclass(frozen=True)
class MergedJob:
    """One self-contained merged program (`adapter` folded in; None: the base model), built in a worker."""

    name: str
    model_dir: Path
    max_context: int
    adapter: Adapter | None
    slots: LoraSlots | None
    recipe: QuantRecipe
    metadata: dict
    out_dir: Path


def export_merged(job: MergedJob, threads: int) -> tuple[dict, list[Path]]:
    """Build, torch.export, lower and write one merged program; returns its delegation stats (with the
    seconds it took, a worker's share of the export) and its files."""
    torch.set_num_threads(threads)
    began = time.monotonic()
    module = build_module(job.model_dir, job.max_context, job.adapter, job.slots, True, job.recipe)
    et, stats = lower({BASE_METHOD: export_program(module)}, job.metadata, separate=False)
    files = write_program(et, job.out_dir / f"{job.name}.pte")
    stats[BASE_METHOD]["export_seconds"] = round(time.monotonic() - began, 1)
    return stats, files


def run_merged(jobs: list[MergedJob], workers: int) -> list[tuple[dict, list[Path]]]:
    """The merged programs, `workers` at a time in fresh processes: each program's lowering is single-threaded
    Python, so on N cores N programs lower in the time of one. Results in the order of `jobs`."""
    if workers <= 1:
        return [export_merged(job, torch.get_num_threads()) for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(export_merged, jobs, [threads] * len(jobs)))
    except BrokenProcessPool as e:
        raise MemloraError(f"ExecuTorch export: a process exporting the merged programs ({', '.join(j.name for j in jobs)}) "
                           f"died before finishing (killed, or out of memory: each needs about 3 GB for the default "
                           f"model); nothing was written to the bundle") from e


def export_target(req: TargetRequest, bundle_dir: Path, stage: Stage = lambda s: None) -> dict:
    """Write the ExecuTorch target into ``bundle_dir/executorch`` and return its manifest entry."""
    from memlora.session import load_tokenizer

    out_dir = bundle_dir / TARGET
    out_dir.mkdir(parents=True, exist_ok=True)
    slots = unify_slots(req.adapters.values()) if req.adapters else None
    config = DecoderConfig.from_hf(req.model_dir, req.max_context)
    tok = load_tokenizer(req.model_dir)
    metadata = runner_metadata(config, eos_ids(config, tok))
    recipe = EXPORTER.recipe(req)
    files: list[Path] = []
    programs: dict[str, str] = {}
    methods: dict[str, str] = {}
    stats: dict[str, dict] = {}
    gates: dict = {}
    if req.mode == "separable":
        stage(f"executorch: build and quantize ({req.quant}, {len(req.adapters)} adapters stacked)")
        if req.adapters:
            module, spans = build_stacked(req.model_dir, req.max_context, req.adapters, slots, recipe,
                                          req.calibration)
            methods = {name: BASE_METHOD for name in req.adapters}
            gates = {"width": module.gate_width, "adapters": {name: list(span) for name, span in spans.items()}}
        else:
            module = build_module(req.model_dir, req.max_context, None, slots, False, recipe, req.calibration)
        stage(f"executorch: torch.export {BASE_METHOD}")
        et, per_method = lower({BASE_METHOD: export_program(module)}, metadata, separate=True, stage=stage)
        stats["model"] = per_method
        files += write_program(et, out_dir / "model.pte")
        programs["model"] = f"{TARGET}/model.pte"
    else:
        jobs = [MergedJob(name, req.model_dir, req.max_context, adapter, slots, recipe, metadata, out_dir)
                for name, adapter in [("base", None), *req.adapters.items()]]
        workers = min(len(jobs), os.cpu_count() or 1)
        stage(f"executorch: {len(jobs)} merged programs ({req.quant}): build, torch.export and lower, "
              f"{workers} at a time")
        for job, (per_method, written) in zip(jobs, run_merged(jobs, workers)):
            stats[job.name] = per_method
            files += written
            programs[job.name] = f"{TARGET}/{job.name}.pte"
            if job.adapter is not None:
                methods[job.name] = BASE_METHOD
    data = [f for f in files if f.suffix == ".ptd"]
    return {
        "max_context": req.max_context,
        "graphs": programs,
        "methods": methods,
        **({"gates": gates} if gates else {}),
        "data_files": {f.stem: f.relative_to(bundle_dir).as_posix() for f in data},
        "delegation": stats,
        "runner_metadata": metadata,
        "files": sorted(f.relative_to(bundle_dir).as_posix() for f in files),
    }


EXPORTER = Exporter("executorch", "ExecuTorch", executorch_quant.QUANTS, executorch_quant.recipe, export_target,
                    refused=executorch_quant.REFUSED, options=frozenset({"embedding_int8", "int8_projections"}))
