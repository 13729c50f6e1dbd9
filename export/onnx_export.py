"""The ONNX target: the export-friendly decoder as an onnxruntime graph with an in-place KV cache.

Why GroupQueryAttention: onnxruntime's ``com.microsoft::GroupQueryAttention`` writes new keys/values into a
``past`` buffer of the full context length and, when ``past`` and ``present`` are bound to the same
buffer (IO binding), does so in place -- a decode step copies no cache at all, where a plain
past-in/present-out graph copies every layer's cache every step. The kernel also applies RoPE (from the
decoder's own tables, passed as ``cos_cache``/``sin_cache`` constants) at positions ``start .. start+T-1``,
which saves a dozen small ops per layer, and takes q|k|v packed straight from the fused projection; each
residual add and the RMSNorm after it run as one ``SkipSimplifiedLayerNormalization`` (`fuse_skip_norms`);
q/k/v and gate/up run as one matmul each (``Decoder.fuse_projections``, LoRA B per output chunk):
onnxruntime pays a fixed cost per kernel, which dominates a small model's decode step.

Graph interface (``max_context`` = C, per layer i) -- onnxruntime-genai's calling convention
(`memlora.export.genai_config`), so ``og.Model`` runs the bundle's ``onnx/`` folder as it is::

    inputs   input_ids [1, T] int64, attention_mask [1, S] int64 (ones over positions 0 .. S-1, S = start + T;
             GroupQueryAttention's ``seqlens_k`` = S - 1 and ``total_sequence_length`` = S are computed from it,
             as onnxruntime-genai's own model builder does),
             past_key_values.{i}.key / .value [1, kv_heads, C, head_dim] float32,
             logits_start [] int64, default 0: logits for positions logits_start .. T-1 (our backend asks for
             the last one alone; onnxruntime-genai feeds nothing and gets every position, as it expects),
             lora inputs ``lora.<module>.a`` [in, members * r] / ``.b`` [r, out], or [chunks, r, width] for a
             fused projection (separable only), default zeros (the base model) stored as an empty sparse
             tensor, so onnxruntime-genai runs the graph with no adapter active and the file stays small
    outputs  logits [1, T - logits_start, vocab], present.{i}.key / .value (same buffer as past)

Modes: *separable* -- one base graph whose LoRA A/B are inputs (with the empty sparse zero defaults above:
dense zeros would add one adapter's size to the base graph), plus one ``<adapter>.onnx_adapter`` per
adapter for onnxruntime's LoRA API and onnxruntime-genai's ``og.Adapters``; *merged* -- one self-contained graph
per adapter (``base.onnx`` plus ``<adapter>.onnx``) with the adapter baked in as constants. The adapter
stays a float low-rank branch there too (not folded into W) so that quantization touches base weights
only, in every precision, and one traced graph serves every adapter.

Quantization (``MatMulNBits``, base MatMuls only, LoRA and embeddings stay float):
- int4: 4-bit blocks of ``block_size`` along K, ``accuracy_level=4`` (int8 activations in the kernel).
- int8: ALSO ``MatMulNBits`` (8-bit blocks, ``accuracy_level=4``) rather than ``quantize_dynamic``.
  ``quantize_dynamic`` decodes faster here (its DynamicQuantizeMatMul uses the VNNI int8 GEMM), but its
  per-tensor weight scales and per-tensor dynamic activation scales break SmolLM2-135M, whose activations
  have large outlier channels: `memlora parity` measured top-1 agreement 81%, KL 0.68 and 20% greedy exact
  match against fp32 (conversion gap KL 0.67 vs 0.005 for block-wise int8). Per-block scales keep the
  outliers local; speed bought with wrong tokens is no win.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memlora.errors import MemloraError
from memlora.recipe import QuantRecipe

from . import genai_config
from .calibrate import load_decoder
from .decoder import Decoder, grouped_attention, rotate
from .genai_config import ATTENTION_MASK, INPUT_IDS, LOGITS, GenaiModel, cache_names
from .lora import Adapter, slot_arrays, unify_slots
from .target import Exporter, Stage, TargetRequest

TARGET = "onnx"
QUANTS = ("fp32", "int8", "int4")
QUANT_BITS = {"int8": 8, "int4": 4}
OPSET = 23  # RMSNormalization is one op from opset 23
LOGITS_START = "logits_start"


@torch.library.custom_op("memlora::gqa", mutates_args=())
def gqa(
    qkv: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_len: torch.Tensor,
    cos_half: torch.Tensor,
    sin_half: torch.Tensor,
    num_heads: int,
    kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference semantics of GroupQueryAttention with packed input (shared buffer, RoPE inside): qkv
    [1,T,(H+2KV)*D] before RoPE, cos/sin tables [max_context, D/2]; new tokens sit at positions
    total_len-T .. total_len-1."""
    b, t, _ = qkv.shape
    d = past_k.shape[-1]
    q, k, v = qkv.split([num_heads * d, kv_heads * d, kv_heads * d], dim=-1)
    start = int(total_len) - t
    pos = torch.arange(start, start + t)
    cos, sin = torch.cat((cos_half[pos],) * 2, -1), torch.cat((sin_half[pos],) * 2, -1)
    q = rotate(q.reshape(b, t, num_heads, d), cos, sin).transpose(1, 2)
    k = rotate(k.reshape(b, t, kv_heads, d), cos, sin).transpose(1, 2)
    present_k, present_v = past_k.clone(), past_v.clone()
    present_k[:, :, start : start + t] = k
    present_v[:, :, start : start + t] = v.reshape(b, t, kv_heads, d).transpose(1, 2)
    mask = torch.arange(start + t)[None, :] <= pos[:, None]
    out = grouped_attention(q, present_k[:, :, : start + t], present_v[:, :, : start + t], mask)
    return out, present_k, present_v


@gqa.register_fake
def _(qkv, past_k, past_v, seqlens_k, total_len, cos_half, sin_half, num_heads, kv_heads):
    out = qkv.new_empty(qkv.shape[0], qkv.shape[1], num_heads * past_k.shape[-1])
    return out, torch.empty_like(past_k), torch.empty_like(past_v)


def _register_gqa_schema() -> None:
    """Declare the subset of onnxruntime's contrib-op schema the graph uses, so onnxscript can emit it."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("GroupQueryAttention", "com.microsoft"):
        return
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        "GroupQueryAttention", "com.microsoft", 1,
        inputs=[param("query", "T"), param("key", "T", param_option=optional),
                param("value", "T", param_option=optional), param("past_key", "T"),
                param("past_value", "T"), param("seqlens_k", "M"), param("total_sequence_length", "M"),
                param("cos_cache", "T"), param("sin_cache", "T")],
        outputs=[param("output", "T"), param("present_key", "T"), param("present_value", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute(name, OpSchema.AttrType.INT, "")
                    for name in ("num_heads", "kv_num_heads", "do_rotary", "rotary_interleaved")],
    )
    onnx.defs.register_schema(schema)


def _gqa_onnx(qkv, past_k, past_v, seqlens_k, total_len, cos_half, sin_half, num_heads: int, kv_heads: int):
    import onnxscript

    _register_gqa_schema()
    msft = onnxscript.values.Opset("com.microsoft", 1)
    return msft.GroupQueryAttention(  # key and value omitted: query is q|k|v packed
        qkv, None, None, past_k, past_v, seqlens_k, total_len, cos_half, sin_half,
        num_heads=num_heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0,
    )


class OnnxStep(nn.Module):
    """The decoder with GroupQueryAttention over per-layer cache buffers; the module the graph is traced from."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, attention_mask, logits_start, past: list[torch.Tensor]):
        dec, c = self.decoder, self.decoder.config
        half = c.head_dim // 2
        cos_half, sin_half = dec.rope_cos[:, :half], dec.rope_sin[:, :half]
        seqlens_k = (attention_mask.sum(1) - 1).to(torch.int32)
        total_len = torch.full((), attention_mask.shape[1], dtype=torch.int32)
        present: list[torch.Tensor] = []

        def attend(i: int, qkv):
            out, pk, pv = gqa(qkv, past[2 * i], past[2 * i + 1], seqlens_k, total_len, cos_half, sin_half,
                              c.num_heads, c.num_kv_heads)
            present.extend((pk, pv))
            return out

        # packed q|k|v and RoPE inside GroupQueryAttention: no split, reshape or rotation ops per layer
        x, _ = dec.run_layers(dec.embed(input_ids), None, None, attend, packed=True)
        first = logits_start.item()
        torch._check(first >= 0)
        torch._check(first < x.shape[1])
        return (dec.head(x[:, first:]), *present)


def lora_input_name(module: str, ab: str) -> str:
    """Adapter-neutral name of a LoRA slot tensor, shared by the graph input and every `.onnx_adapter`."""
    return f"lora.{module}.{ab}"


def export_graph(decoder: Decoder):
    """Trace `decoder` to an ONNX ModelProto; its LoRA slots become named graph inputs."""
    import onnx_ir as ir
    import onnxscript
    from onnx import numpy_helper

    c = decoder.config
    past_names, present_names = cache_names(c.num_layers)
    t = torch.export.Dim("T", min=1, max=c.max_context)
    s = torch.export.Dim("S", min=1, max=c.max_context)
    cache = torch.zeros(1, c.num_kv_heads, c.max_context, c.head_dim)
    args = (
        torch.zeros(1, 3, dtype=torch.int64),
        torch.ones(1, 5, dtype=torch.int64),
        torch.tensor(2),
        [cache.clone() for _ in past_names],
    )
    shapes = ({1: t}, {1: s}, None, [None for _ in past_names])
    program = torch.onnx.export(
        OnnxStep(decoder).eval(),
        args,
        dynamo=True,
        optimize=False,  # the optimizer would fold LoRA slots into anonymous constants before we name them
        verbose=False,
        dynamic_shapes=shapes,
        input_names=[INPUT_IDS, ATTENTION_MASK, LOGITS_START, *past_names],
        output_names=[LOGITS, *present_names],
        custom_translation_table={torch.ops.memlora.gqa.default: _gqa_onnx},
        opset_version=OPSET,
    )
    model = program.model
    _name_lora(model, decoder)
    # no size limits: every weight transpose (including the tied lm_head's) must fold into an initializer,
    # or onnxruntime would transpose it at every step and quantization would skip that MatMul
    onnxscript.optimizer.optimize(model, input_size_limit=1 << 40, output_size_limit=1 << 40)
    proto = ir.to_proto(model)
    fuse_skip_norms(proto.graph)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), LOGITS_START))  # its default
    return proto


def fuse_skip_norms(graph) -> None:
    """Residual ``Add`` + ``RMSNormalization`` -> one ``com.microsoft::SkipSimplifiedLayerNormalization``
    that returns the normalized sum and the sum itself (its 4th output).

    onnxruntime fuses this pattern on its own only for its SimplifiedLayerNormalization, not for the
    opset-23 op; every layer has two, so a decode step runs 2 kernels per layer fewer. The fused node takes
    the Add's place: its inputs exist there, and every consumer of the Add or the norm comes later."""
    from onnx import helper

    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    fused, dropped = {}, set()
    for norm in graph.node:
        add = producer.get(norm.input[0])
        if norm.op_type != "RMSNormalization" or add is None or add.op_type != "Add":
            continue
        if any(i in constants for i in add.input) or id(add) in dropped:
            continue
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        node = helper.make_node(
            "SkipSimplifiedLayerNormalization", [*add.input, norm.input[1]], [norm.output[0], "", "", add.output[0]],
            name=f"{norm.name}_skip", domain="com.microsoft", epsilon=eps)
        node.metadata_props.extend(add.metadata_props)  # the Add's module scope: a layer's output (parity probe)
        fused[id(add)] = node
        dropped |= {id(add), id(norm)}
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) in fused or id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)


def _name_lora(model, decoder: Decoder) -> None:
    """Turn the LoRA slot initializers into graph inputs named adapter-neutrally, with no stored value.

    As inputs they also survive the optimizer, which would otherwise fold the zero slots away."""
    import onnx_ir as ir

    for module in decoder.lora_modules():
        for ab in "ab":
            value = model.graph.initializers.pop(f"decoder.{module}.lora_{ab}")
            value.shape = ir.Shape(value.const_value.shape)
            value.type = ir.TensorType(value.const_value.dtype)
            value.const_value = None
            value.name = lora_input_name(module, ab)
            model.graph.inputs.append(value)


def quantize(model, quant: str, block_size: int):
    """Quantize base-weight MatMuls to MatMulNBits (see the module docstring); LoRA MatMuls stay float."""
    if quant == "fp32":
        return model
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, logger

    logger.setLevel(logging.WARNING)  # it logs every node at INFO
    lora = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith("lora.")]
    quantizer = MatMulNBitsQuantizer(
        model, bits=QUANT_BITS[quant], block_size=block_size, is_symmetric=True, accuracy_level=4,
        nodes_to_exclude=lora,
    )
    quantizer.process()
    return quantizer.model.model


def zero_lora_defaults(model) -> None:
    """Store a default for every LoRA input of `model`: zeros, the base model, as empty sparse tensors.

    onnxruntime-genai feeds the LoRA inputs only while an adapter is active, so without a default its
    generation with no adapter finds inputs missing. An empty sparse tensor costs a few bytes where dense
    zeros would add one adapter's size to the base graph; onnxruntime expands it at load."""
    from onnx import helper, numpy_helper

    for value in model.graph.input:
        if value.name.startswith("lora."):
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            model.graph.sparse_initializer.append(helper.make_sparse_tensor(
                numpy_helper.from_array(np.zeros(0, np.float32), value.name),
                numpy_helper.from_array(np.zeros(0, np.int64), f"{value.name}.indices"), shape))


def with_lora(model, decoder: Decoder, adapter: Adapter):
    """A copy of `model` whose LoRA slot inputs are constants holding `adapter`."""
    import onnx
    from onnx import numpy_helper

    values = slot_arrays(decoder, adapter, lora_input_name)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    slots = [i.name for i in copy.graph.input if i.name.startswith("lora.")]
    if set(slots) != set(values):
        raise MemloraError(f"exported graph's LoRA inputs {sorted(set(slots) ^ set(values))[:3]} do not match the slots")
    copy.graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in slots)
    kept = [i for i in copy.graph.input if not i.name.startswith("lora.")]
    del copy.graph.input[:]
    copy.graph.input.extend(kept)
    return copy


def save_graph(model, path: Path) -> list[Path]:
    """Write a graph with its weights in one external-data file next to it; returns both paths.

    Saving moves the weights of `model` out to the file, so callers pass a model they no longer need."""
    import onnx

    data = path.with_name(path.name + ".data")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]


def write_adapter(decoder: Decoder, adapter: Adapter, path: Path) -> Path:
    """One `.onnx_adapter` file: the slot tensors of `adapter` under the graph's LoRA input names."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    # OrtValues alias the numpy memory: keep the arrays alive until the file is written
    arrays = slot_arrays(decoder, adapter, lora_input_name)
    fmt.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(arr) for name, arr in arrays.items()})
    fmt.export_adapter(str(path))
    return path


def write_genai_config(req: TargetRequest, decoder: Decoder, out_dir: Path) -> Path:
    """``genai_config.json`` for the base graph, the tokenizer read from the bundle's own tokenizer folder;
    eos ids as the manifest lists them, the tokenizer's pad id (else the first eos id)."""
    from memlora.session import load_tokenizer

    from .bundle import TOKENIZER_DIR, eos_ids

    c = decoder.config
    tokenizer = load_tokenizer(req.model_dir)
    eos = eos_ids(c, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return GenaiModel(c.architecture, "base.onnx", f"../{TOKENIZER_DIR}", c.vocab_size, c.hidden_size,
                      c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.max_context, c.bos_token_id,
                      tuple(eos), pad).write(out_dir)


def recipe(req: TargetRequest) -> QuantRecipe:
    """fp32 MatMul, or MatMulNBits on every base MatMul and the output head (int8 also in blocks: see above)."""
    if req.quant == "fp32":
        return QuantRecipe("fp32", op="MatMul")
    return QuantRecipe(req.quant, op="com.microsoft::MatMulNBits (accuracy_level 4)", weights="linear",
                       bits=QUANT_BITS[req.quant], block_size=req.block_size, scale_rule="max_to_min",
                       activations="int8_block", act_block=req.block_size, lm_head=True,
                       notes="LoRA branches and the embedding Gather stay float")


def export_target(req: TargetRequest, bundle_dir: Path, stage: Stage = lambda s: None) -> dict:
    """Write the ONNX target into ``bundle_dir/onnx`` and return its manifest entry (paths relative to the
    bundle)."""
    out_dir = bundle_dir / TARGET
    out_dir.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, str] = {}
    adapter_files: dict[str, str] = {}
    files: list[Path] = []

    def build(decoder: Decoder, name: str):
        stage(f"onnx: export {name} graph")
        model = export_graph(decoder)
        stage(f"onnx: quantize {name} graph ({req.quant})")
        return quantize(model, req.quant, req.block_size)

    def emit(model, name: str) -> None:
        files.extend(save_graph(model, out_dir / f"{name}.onnx"))
        graphs[name] = f"{TARGET}/{name}.onnx"

    def load(slots) -> Decoder:
        decoder = load_decoder(req.model_dir, req.max_context, slots, req.calibration)
        decoder.fuse_projections()
        return decoder

    slotted = load(unify_slots(req.adapters.values()))
    if req.mode == "separable":
        base = build(slotted, "base")
        zero_lora_defaults(base)
        emit(base, "base")
        for name, adapter in req.adapters.items():
            stage(f"onnx: adapter {name}")
            files.append(write_adapter(slotted, adapter, out_dir / f"{name}.onnx_adapter"))
            adapter_files[name] = f"{TARGET}/{name}.onnx_adapter"
    else:
        emit(build(load(None), "base"), "base")
        # one traced and quantized graph, copied per adapter with its LoRA constants filled in: the adapter
        # stays a float low-rank branch (quantization touches base weights only) and tracing runs once
        template = build(slotted, "adapter")
        for name, adapter in req.adapters.items():
            stage(f"onnx: graph for {name}")
            emit(with_lora(template, slotted, adapter), name)
    files.append(write_genai_config(req, slotted, out_dir))
    return {
        "max_context": req.max_context,
        "graphs": graphs,
        "adapter_files": adapter_files,
        "genai_config": f"{TARGET}/{genai_config.FILE}",
        "files": sorted(f.relative_to(bundle_dir).as_posix() for f in files),
    }


EXPORTER = Exporter("onnx", "ONNX", QUANTS, recipe, export_target)
