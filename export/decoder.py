"""The export-friendly decoder for the Llama family (SmolLM2, Llama, Qwen2); every exporter starts from it.

Why re-author the decoder instead of tracing the HF modeling code: a static KV cache, RoPE from
precomputed tables, a mask computed from positions (no data-dependent control flow) and LoRA slots built
in lower cleanly to ONNX, ExecuTorch and Core ML, and the same module is the fp32 reference they are
checked against (verified against transformers+peft to <= 1e-4 max |delta logits|).

API
---
``config = DecoderConfig.from_hf(model_dir, max_context=2048)``
    Model facts read from ``config.json`` (architecture ``llama`` or ``qwen2``; GQA, optional q/k/v bias,
    tied or untied embeddings, RoPE type default/linear/llama3/yarn).
``decoder = Decoder.from_pretrained(model_dir, max_context=2048, lora=LoraSlots(targets, rank))``
    Loads HF safetensors (single file or sharded) in fp32, ``eval()`` mode, no grad needed.
    ``lora`` adds zero LoRA slots (``lora_a [in, rank]``, ``lora_b [rank, out]`` -- transposed from PEFT so
    ``(x @ A) @ B`` needs no transpose in an exported graph; scale folded into B) on the named
    projections (any subset of ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``) of every layer.
    Fill them with ``memlora.export.lora``: ``load_adapter`` + ``fill_slots(decoder, adapter)`` (or
    ``Decoder.clear_lora()``); ``Decoder.merge_lora()`` folds the active adapter into the base weights.

Forward with the built-in static cache (torch.export / ExecuTorch / Core ML)::

    logits = decoder(tokens, input_pos)                  # tokens [1, T] int64, input_pos [T] int64
    logits, hidden = decoder(tokens, input_pos, return_hidden=True)

``logits`` is ``[1, T, vocab]`` fp32. ``hidden`` is a list of ``num_layers + 1`` tensors ``[1, T, hidden]``:
the embeddings and each layer's output (before the final norm), for localising the first diverging layer.
The cache is one pair of buffers per layer, ``layers[i].self_attn.k_cache`` / ``v_cache`` of shape
``[1, kv_heads, max_context, head_dim]``, written in place at ``input_pos`` (``cache[:, :, input_pos] =
k``, an ``index_put_``) and attended with a mask ``key_pos <= query_pos``: entries at positions >=
``input_pos[0]`` are simply overwritten, so a new sequence needs no reset (``reset_cache()`` zeroes it).

Building blocks for other cache layouts (the ONNX target uses onnxruntime's GroupQueryAttention)::

    x = decoder.embed(tokens); cos, sin = decoder.rope(input_pos)
    x, hidden = decoder.run_layers(x, cos, sin, attend)   # attend(layer, q, k, v) -> [1, T, heads*head_dim]
    logits = decoder.head(x)

``attend`` receives ``q [1, T, heads, head_dim]`` and ``k, v [1, T, kv_heads, head_dim]`` after RoPE, or
before it when ``cos, sin = None, None`` (for fused attention kernels that apply RoPE from the decoder's
tables ``rope_cos`` / ``rope_sin`` ``[max_context, head_dim]`` themselves). With ``packed=True`` (after
``fuse_projections``) it receives the ``qkv_proj`` output ``[1, T, (heads + 2 kv_heads) * head_dim]`` as is,
for kernels that take q|k|v packed: no split or reshape ops in the graph.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from memlora.errors import MemloraError

ARCHITECTURES = ("llama", "qwen2")
QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")
FUSED = {"qkv_proj": QKV, "gate_up_proj": GATE_UP}
ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
LORA_TARGETS = ATTN_TARGETS + MLP_TARGETS
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

Attend = Callable[..., torch.Tensor]  # (layer, q, k, v), or (layer, qkv) when packed


@dataclass(frozen=True)
class DecoderConfig:
    """The facts of a Llama-family checkpoint that the decoder and the bundle manifest need."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_context: int
    tie_embeddings: bool
    qkv_bias: bool
    o_bias: bool = False
    mlp_bias: bool = False
    rope_type: str = "default"
    rope_theta: float = 10000.0
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    hf_config: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_hf(cls, model_dir: Path, max_context: int | None = None) -> "DecoderConfig":
        """Read ``config.json``; an architecture or RoPE type the decoder cannot export is an error."""
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise MemloraError(f"{path}: cannot read model config ({e})") from e
        arch = raw.get("model_type")
        if arch not in ARCHITECTURES:
            raise MemloraError(f"{path}: model_type {arch!r} is not supported (supported: {ARCHITECTURES})")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in STATIC_ROPE_TYPES:
            raise MemloraError(f"{path}: RoPE type {rope_type!r} is not supported ({STATIC_ROPE_TYPES})")
        heads = raw["num_attention_heads"]
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        trained_ctx = raw.get("max_position_embeddings", 2048)
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw["rms_norm_eps"],
            max_context=min(max_context or trained_ctx, trained_ctx),
            tie_embeddings=raw.get("tie_word_embeddings", True),
            qkv_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
            o_bias=arch == "llama" and bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            rope_type=rope_type,
            rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            hf_config=raw,
        )

    def inv_freq(self) -> tuple[torch.Tensor, float]:
        """RoPE inverse frequencies and cos/sin scaling, computed as transformers does for this type."""
        if self.rope_type == "default":
            exps = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
            return 1.0 / (self.rope_theta**exps), 1.0
        from transformers import AutoConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        hf = AutoConfig.for_model(**self.hf_config)
        return ROPE_INIT_FUNCTIONS[self.rope_type](hf, torch.device("cpu"))


@dataclass(frozen=True)
class LoraSlots:
    """Which projections carry a LoRA slot, and its rank (shared by every adapter that fills it)."""

    targets: tuple[str, ...]
    rank: int

    def __post_init__(self):
        bad = set(self.targets) - set(LORA_TARGETS)
        if bad:
            raise MemloraError(f"LoRA targets {sorted(bad)} are not projections of this decoder {LORA_TARGETS}")


class LoraLinear(nn.Module):
    """A linear layer with an optional low-rank slot: ``y = x W^T + b + (x A) B`` (scale folded in B).

    A fused projection (`Decoder.fuse_projections`) stores B per output chunk: `chunks` names, for each
    equal-width chunk of the output, the member whose rank block feeds it, and ``lora_b`` is
    ``[chunks, rank per member, chunk width]``. That is the members' own B's and nothing else; a
    block-diagonal ``[members * rank, out]`` B would store (and read at every step) mostly zeros."""

    def __init__(self, d_in: int, d_out: int, bias: bool, rank: int = 0, chunks: tuple[int, ...] = ()):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_out, d_in), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(d_out), requires_grad=False) if bias else None
        self.rank = rank
        self.chunks = chunks
        self.linear_layout = False
        self.register_buffer("input_scale", None, persistent=False)
        """[in] or None: the base weight is stored scaled per input channel and its input multiplied by this
        (AWQ, `memlora.export.awq`); the LoRA branch sees the input as it is."""
        if rank:
            self.lora_a = nn.Parameter(torch.zeros(d_in, rank), requires_grad=False)
            shape = (len(chunks), rank // self.members, d_out // len(chunks)) if chunks else (rank, d_out)
            self.lora_b = nn.Parameter(torch.zeros(shape), requires_grad=False)
            if chunks and chunks != tuple(range(self.members)):
                self.register_buffer("chunk_member", torch.tensor(chunks), persistent=False)

    @property
    def members(self) -> int:
        return max(self.chunks) + 1 if self.chunks else 1

    def to_linear_layout(self) -> None:
        """Store the filled slots as linear weights (A [rank, in], B [out, rank]) and compute the branch
        as two linears. XNNPACK delegates a linear with a constant weight but not a matmul on a 3-D
        activation of dynamic length: in the matmul layout every LoRA branch became separate delegate
        calls (63 instead of 19 for 4 layers), slowing the program and making lowering quadratic."""
        if self.chunks:
            raise MemloraError("a fused projection's LoRA slot has no linear layout")
        if self.rank and not self.linear_layout:
            self.lora_a = nn.Parameter(self.lora_a.t().contiguous(), requires_grad=False)
            self.lora_b = nn.Parameter(self.lora_b.t().contiguous(), requires_grad=False)
            self.linear_layout = True

    def stack(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Hold several adapters side by side in one slot: A ``[in, n * rank]``, B ``[n * rank, out]`` (adapter k
        owns rank block k); a gate over the ``n * rank`` columns (`lora`) picks the active one."""
        if self.chunks or self.linear_layout:
            raise MemloraError("adapters are stacked into a plain projection's slot, before its linear layout")
        self.lora_a = nn.Parameter(a.contiguous(), requires_grad=False)
        self.lora_b = nn.Parameter(b.contiguous(), requires_grad=False)
        self.rank = a.shape[1]

    def lora(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """The low-rank branch ``((x A) * gate) B`` alone; `gate` [rank] (None: all ones) zeroes the rank
        blocks of stacked adapters that are not active."""
        if self.linear_layout:
            h = nn.functional.linear(x, self.lora_a)
            return nn.functional.linear(h if gate is None else h * gate, self.lora_b)
        h = x @ self.lora_a
        if gate is not None:
            h = h * gate
        if not self.chunks:
            return h @ self.lora_b
        h = h.reshape(-1, self.members, self.lora_b.shape[1])  # [N, members, r]
        if hasattr(self, "chunk_member"):
            h = h.index_select(1, self.chunk_member)  # [N, chunks, r]
        out = torch.matmul(h.transpose(0, 1), self.lora_b)  # [chunks, N, width]: one batched matmul
        return out.transpose(0, 1).reshape(x.shape[0], -1, self.weight.shape[0])

    def base_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_scale is None else x * self.input_scale

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = nn.functional.linear(self.base_input(x), self.weight, self.bias)
        return y + self.lora(x, gate) if self.rank else y


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one op for exporters that have it (ONNX RMSNormalization); torch.export decomposes it
        return nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the HF convention (rotate halves); x [1, T, heads, D], cos/sin [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of `q` [b, heads, t, d] over cached `keys`/`values` [b, kv_heads, s, d], each kv head shared by
    a group of query heads (GQA); `mask` [t, s] (bool, or additive); returns [b, t, heads * d]. Every target's
    attention is this, so a change of layout happens once."""
    groups = q.shape[1] // keys.shape[1]
    out = nn.functional.scaled_dot_product_attention(
        q, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1), attn_mask=mask)
    b, heads, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, heads * d)


class Attention(nn.Module):
    def __init__(self, c: DecoderConfig, slots: LoraSlots | None):
        super().__init__()
        self.c = c
        rank = {t: slots.rank if slots and t in slots.targets else 0 for t in LORA_TARGETS}
        d, hd = c.hidden_size, c.head_dim
        self.q_proj = LoraLinear(d, c.num_heads * hd, c.qkv_bias, rank["q_proj"])
        self.k_proj = LoraLinear(d, c.num_kv_heads * hd, c.qkv_bias, rank["k_proj"])
        self.v_proj = LoraLinear(d, c.num_kv_heads * hd, c.qkv_bias, rank["v_proj"])
        self.o_proj = LoraLinear(c.num_heads * hd, d, c.o_bias, rank["o_proj"])
        shape = (1, c.num_kv_heads, c.max_context, hd)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
            gate: torch.Tensor | None = None):
        """Projections and RoPE: q [1, T, heads, D], k/v [1, T, kv_heads, D]; no RoPE if `cos` is None
        (for attention kernels that rotate q and k themselves)."""
        b = x.shape[0]
        if hasattr(self, "qkv_proj"):  # fused by Decoder.fuse_projections
            kv = self.c.num_kv_heads * self.c.head_dim
            q, k, v = self.qkv_proj(x, gate).split([self.c.num_heads * self.c.head_dim, kv, kv], dim=-1)
        else:
            q, k, v = self.q_proj(x, gate), self.k_proj(x, gate), self.v_proj(x, gate)
        # -1, not `t`: a reshape to a symbolic length stays outside XNNPACK delegates (ExecuTorch)
        q = q.view(b, -1, self.c.num_heads, self.c.head_dim)
        k = k.view(b, -1, self.c.num_kv_heads, self.c.head_dim)
        v = v.view(b, -1, self.c.num_kv_heads, self.c.head_dim)
        if cos is None:
            return q, k, v
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def attend_static(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        """Write k/v into the static cache at `input_pos`, attend over every cached position <= the query's."""
        self.k_cache[:, :, input_pos] = k.transpose(1, 2)
        self.v_cache[:, :, input_pos] = v.transpose(1, 2)
        mask = torch.arange(self.c.max_context, device=q.device)[None, :] <= input_pos[:, None]
        return grouped_attention(q.transpose(1, 2), self.k_cache, self.v_cache, mask)


class MLP(nn.Module):
    def __init__(self, c: DecoderConfig, slots: LoraSlots | None):
        super().__init__()
        rank = {t: slots.rank if slots and t in slots.targets else 0 for t in MLP_TARGETS}
        d, f = c.hidden_size, c.intermediate_size
        self.gate_proj = LoraLinear(d, f, c.mlp_bias, rank["gate_proj"])
        self.up_proj = LoraLinear(d, f, c.mlp_bias, rank["up_proj"])
        self.down_proj = LoraLinear(f, d, c.mlp_bias, rank["down_proj"])

    def forward(self, x: torch.Tensor, lora_gate: torch.Tensor | None = None) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):  # fused by Decoder.fuse_projections
            gate, up = self.gate_up_proj(x, lora_gate).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x, lora_gate), self.up_proj(x, lora_gate)
        return self.down_proj(nn.functional.silu(gate) * up, lora_gate)


def load_hf_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a HF checkpoint (``model.safetensors`` or a sharded index), named as HF names them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = model_dir / name
        try:
            state.update(load_file(path))
        except (OSError, SafetensorError) as e:
            raise MemloraError(f"{path}: cannot read safetensors weights ({e})") from e
    return state


class DecoderLayer(nn.Module):
    def __init__(self, c: DecoderConfig, slots: LoraSlots | None):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, slots)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c, slots)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend, packed: bool = False,
                gate: torch.Tensor | None = None):
        h = self.input_layernorm(x)
        attn = self.self_attn
        out = attend(attn.qkv_proj(h, gate)) if packed else attend(*attn.qkv(h, cos, sin, gate))
        x = x + attn.o_proj(out, gate)
        return x + self.mlp(self.post_attention_layernorm(x), gate)


class Decoder(nn.Module):
    """Llama-family decoder with a static KV cache and LoRA slots; see the module docstring for the API."""

    def __init__(self, config: DecoderConfig, lora: LoraSlots | None = None):
        super().__init__()
        c = self.config = config
        self.slots = lora
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(c, lora) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if not c.tie_embeddings:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
            self.lm_head.weight.requires_grad_(False)
        inv_freq, scaling = c.inv_freq()
        freqs = torch.outer(torch.arange(c.max_context, dtype=torch.float32), inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("rope_sin", emb.sin() * scaling, persistent=False)

    @classmethod
    def from_pretrained(
        cls, model_dir: Path, max_context: int | None = None, lora: LoraSlots | None = None
    ) -> "Decoder":
        """Build the decoder from a HF checkpoint directory (config.json + safetensors) in fp32."""
        config = DecoderConfig.from_hf(model_dir, max_context)
        decoder = cls(config, lora).eval()
        decoder.load_base(load_hf_state_dict(Path(model_dir)), Path(model_dir))
        return decoder

    def load_base(self, hf_state: dict[str, torch.Tensor], source: Path) -> None:
        """Copy HF weights (``model.``-prefixed names) into the decoder; missing or misshapen ones are errors."""
        own = {n: p for n, p in self.named_parameters() if ".lora_" not in n}
        for name, param in own.items():
            hf_name = name if name == "lm_head.weight" else f"model.{name}"
            tensor = hf_state.get(hf_name)
            if tensor is None:
                raise MemloraError(f"{source}: weight {hf_name} is missing from the checkpoint")
            if tuple(tensor.shape) != tuple(param.shape):
                raise MemloraError(
                    f"{source}: weight {hf_name} has shape {tuple(tensor.shape)}, config says {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(tensor.to(torch.float32))

    def lora_modules(self) -> dict[str, LoraLinear]:
        """Projections with a LoRA slot, by PEFT-style module path (``layers.3.self_attn.q_proj``)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, LoraLinear) and m.rank}

    def clear_lora(self) -> None:
        with torch.no_grad():
            for m in self.lora_modules().values():
                m.lora_a.zero_()
                m.lora_b.zero_()

    def merge_lora(self) -> None:
        """Fold the active adapter into the base weights (exact in fp32) and zero the slots."""
        if any(m.input_scale is not None for m in self.lora_modules().values()):
            raise MemloraError("AWQ-scaled base weights hold no adapter: they are exported separable only")
        with torch.no_grad():
            for m in self.lora_modules().values():
                m.weight += m.lora(torch.eye(m.weight.shape[1])[None]).squeeze(0).T
        self.clear_lora()

    def merged(self) -> "Decoder":
        """A copy without LoRA slots, the active adapter folded into its weights: what a merged export
        runs (no zero low-rank branch left in the graph)."""
        self.merge_lora()
        plain = Decoder(self.config).eval()
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if ".lora_" not in k})
        return plain

    def fuse_projections(self) -> None:
        """Replace q/k/v by one ``qkv_proj`` and gate/up by one ``gate_up_proj`` (weights concatenated).

        Fewer, larger matmuls per layer: what a runtime with a fixed cost per kernel (onnxruntime) decodes
        fastest. A fused LoRA slot has A ``[in, members * rank]`` (the members' A's side by side) and B per
        output chunk of the members' common width (see `LoraLinear`; `memlora.export.lora.slot_tensors`
        fills them): q/k/v of SmolLM2-135M are 3 + 1 + 1 chunks of 192 columns.
        """
        for layer in self.layers:
            for block, fused, members in ((layer.self_attn, "qkv_proj", QKV), (layer.mlp, "gate_up_proj", GATE_UP)):
                parts = [getattr(block, m) for m in members]
                widths = [p.weight.shape[0] for p in parts]
                width = math.gcd(*widths)
                chunks = tuple(i for i, w in enumerate(widths) for _ in range(w // width))
                rank = max(p.rank for p in parts) * len(parts)  # every member gets a block, zero if untargeted
                lin = LoraLinear(parts[0].weight.shape[1], sum(widths), parts[0].bias is not None, rank,
                                 chunks if rank else ())
                with torch.no_grad():
                    lin.weight.copy_(torch.cat([p.weight for p in parts]))
                    if lin.bias is not None:
                        lin.bias.copy_(torch.cat([p.bias for p in parts]))
                lin.input_scale = parts[0].input_scale  # one per input, so members share it (awq.GROUPS)
                setattr(block, fused, lin)
                for m in members:
                    delattr(block, m)

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.k_cache.zero_()
            layer.self_attn.v_cache.zero_()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(tokens)

    def rope(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for `input_pos`, gathered from the precomputed tables: [T, head_dim] each."""
        return self.rope_cos[input_pos], self.rope_sin[input_pos]

    def run_layers(
        self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, attend: Attend,
        packed: bool = False, gate: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All layers with the caller's attention; returns the last hidden state and every layer's output.
        `gate` [slot rank] scales the LoRA slots' rank columns (stacked adapters: see `LoraLinear.stack`)."""
        if packed and not hasattr(self.layers[0].self_attn, "qkv_proj"):
            raise MemloraError("run_layers(packed=True) needs fuse_projections() first")
        hidden = [x]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, lambda *qkv, i=i: attend(i, *qkv), packed, gate)
            hidden.append(x)
        return x, hidden

    def head(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight
        return nn.functional.linear(self.norm(x), weight)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, return_hidden: bool = False):
        cos, sin = self.rope(input_pos)

        def attend(i: int, q, k, v):
            return self.layers[i].self_attn.attend_static(q, k, v, input_pos)

        x, hidden = self.run_layers(self.embed(tokens), cos, sin, attend)
        logits = self.head(x)
        return (logits, hidden) if return_hidden else logits
