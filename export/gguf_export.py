"""The llama.cpp target: the base model as one GGUF and each adapter as a GGUF LoRA file llama.cpp applies at
run time, so an app that already embeds llama.cpp gets the memory adapters and the parity gate.

Files (``gguf/`` in the bundle)::

    model.gguf        general.type model: architecture, tokenizer (byte-level BPE), weights of the recipe
    <adapter>.gguf    general.type adapter, adapter.type lora: ``blk.N.<tensor>.weight.lora_a`` [r, in] and
                      ``.lora_b`` [out, r] in F32, with PEFT's alpha / r already in B (``adapter.lora.alpha``
                      0: llama.cpp applies B as stored)

Llama checkpoints store q/k rows in HF's rotate-half order; llama.cpp's ``llama`` architecture rotates
interleaved pairs (Meta's order), so q/k weights and the q/k LoRA B rows are permuted back, as llama.cpp's own
``convert_hf_to_gguf.py`` does. Qwen2 rotates halves in llama.cpp too: nothing is permuted.

Weights are quantized by the ``gguf`` package's reference quantizers (the numerics of llama.cpp's own
``quantize_row_*_ref``): int8 -> Q8_0 (symmetric), int4 -> Q4_1 (asymmetric: an fp16 scale and min per block),
blocks of 32; llama.cpp's CPU kernels quantize activations to Q8_0 / Q8_1 (int8 per block of 32) in front of
them. The token embedding is Q8_0 in both and, tied, is the output head as well (llama.cpp reads ``token_embd``
for both), as in the GGUF the default model ships as.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memlora.errors import MemloraError
from memlora.recipe import QuantRecipe

from .decoder import DecoderConfig, load_hf_state_dict
from .lora import Adapter
from .target import Exporter, Stage, TargetRequest

TARGET = "gguf"
MODEL_FILE = "model.gguf"
BLOCK = 32
"""Q8_0 and Q4_0 blocks: 32 inputs share one scale."""
FILE_TYPES = {"fp32": "ALL_F32", "int8": "MOSTLY_Q8_0", "int4": "MOSTLY_Q4_1"}
TENSOR_TYPES = {"fp32": "F32", "int8": "Q8_0", "int4": "Q4_1"}
SCALE_RULES = {"int8": "restricted", "int4": "min_max"}
"""Q8_0: d = max|x| / 127; Q4_1: min -> code 0, max -> code 15 (`memlora.recipe.ScaleRule`). Q4_0 (symmetric,
largest magnitude -> -8) was measured and fails parity on the default model: docs/gguf.md."""
ARCHITECTURES = ("llama", "qwen2")
PROJECTIONS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
PRE_TOKENIZERS = {
    json.dumps({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}): "gpt-2",
}
"""Our tokenizer.json pre-tokenizers and the llama.cpp pre-tokenizer that splits text the same way."""


def own_recipe(req: TargetRequest) -> QuantRecipe:
    if req.quant == "fp32":
        return QuantRecipe("fp32", op="ggml mul_mat F32", notes="F32 weights and KV cache")
    int8 = req.quant == "int8"
    return QuantRecipe(req.quant, op=f"ggml mul_mat {TENSOR_TYPES[req.quant]} x {'Q8_0' if int8 else 'Q8_1'}",
                       weights="linear", bits=8 if int8 else 4, block_size=BLOCK, scale_rule=SCALE_RULES[req.quant],
                       scale_dtype="fp16", symmetric=int8, activations="int8_block", act_block=BLOCK, lm_head=True,
                       embedding="as_weights" if int8 else "q8_0", notes="F32 norms, LoRA and KV cache")


def check(req: TargetRequest) -> str | None:
    if req.block_size != BLOCK:
        return f"--block-size {req.block_size}: llama.cpp's Q8_0 and Q4_0 blocks are {BLOCK} inputs"
    if req.calibration_samples:
        return "--calibrate is not supported: llama.cpp's quantizer rederives its own block scales"
    config = DecoderConfig.from_hf(req.model_dir)
    if config.architecture not in ARCHITECTURES:
        return f"architecture {config.architecture} has no llama.cpp mapping here ({', '.join(ARCHITECTURES)})"
    if config.rope_type != "default":
        return f"RoPE type {config.rope_type} is not written to GGUF yet (default RoPE only)"
    if config.o_bias or config.mlp_bias or (config.qkv_bias and config.architecture == "llama"):
        return "projection biases of a llama model have no tensors in llama.cpp's llama architecture"
    if req.quant != "fp32":
        widths = {config.hidden_size, config.intermediate_size, config.num_heads * config.head_dim}
        odd = sorted(w for w in widths if w % BLOCK)
        if odd:
            return f"input width {odd[0]} is not a multiple of {BLOCK}: {TENSOR_TYPES[req.quant]} cannot hold it"
    return None


def pre_tokenizer(tokenizer: dict, path: Path) -> str:
    """The llama.cpp pre-tokenizer that splits text as `tokenizer` does, or an error naming the file."""
    pre = tokenizer.get("pre_tokenizer") or {}
    key = json.dumps({"type": pre.get("type"), "add_prefix_space": pre.get("add_prefix_space", True),
                      "use_regex": pre.get("use_regex", True)})
    if tokenizer.get("model", {}).get("type") != "BPE" or tokenizer.get("normalizer") or key not in PRE_TOKENIZERS:
        raise MemloraError(f"{path}: GGUF export knows byte-level BPE tokenizers with GPT-2 splitting; this one "
                           f"has model {tokenizer.get('model', {}).get('type')!r}, normalizer "
                           f"{tokenizer.get('normalizer')} and pre-tokenizer {pre}")
    return PRE_TOKENIZERS[key]


def _meta_order(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection (or LoRA B) from HF's rotate-half order back to interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _reorder(config: DecoderConfig, module: str, w: np.ndarray) -> np.ndarray:
    if config.architecture != "llama" or module not in ("self_attn.q_proj", "self_attn.k_proj"):
        return w
    return _meta_order(w, config.num_heads if module == "self_attn.q_proj" else config.num_kv_heads)


def _add_header(writer, config: DecoderConfig) -> None:
    writer.add_context_length(config.max_context)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _add_tokenizer(writer, model_dir: Path, config: DecoderConfig) -> None:
    """The tokenizer.json vocabulary, merges and special ids as llama.cpp's ``gpt2`` tokenizer model reads them."""
    import gguf

    path = model_dir / "tokenizer.json"
    try:
        tok = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MemloraError(f"{path}: cannot read the tokenizer ({e})") from e
    pre = pre_tokenizer(tok, path)
    vocab = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok.get("added_tokens", [])}}
    special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
    added = {a["id"] for a in tok.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= config.vocab_size:
        raise MemloraError(f"{path}: token id {max(by_id)} is outside the model's vocabulary of {config.vocab_size}")
    tokens, types = [], []
    for i in range(config.vocab_size):  # ids the tokenizer never produces still need a row
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED if i in added
                     else gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    settings = _tokenizer_config(model_dir)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        value = settings.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in vocab:
            add(vocab[value])
    bos, eos = _added_specials(tok)
    writer.add_add_bos_token(bos)
    writer.add_add_eos_token(eos)
    if settings.get("chat_template"):
        writer.add_chat_template(settings["chat_template"])


def _added_specials(tokenizer: dict) -> tuple[bool, bool]:
    """Whether encoding adds a special token before and after the text (the post-processor's template), so an app
    calling ``llama_tokenize(add_special=true)`` gets what ``encode(text)`` gives."""
    single = (tokenizer.get("post_processor") or {}).get("single") or []
    special = ["SpecialToken" in part for part in single]
    return bool(special) and special[0], len(special) > 1 and special[-1]


def _tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as e:
        raise MemloraError(f"{path}: cannot read the tokenizer config ({e})") from e


def _tensor(writer, name: str, w: np.ndarray, kind: str = "F32") -> None:
    """Add `w` (numpy [out, in] order) as GGML type `kind` (``F32``, ``Q8_0``, ...); vectors stay F32."""
    import gguf

    w = np.ascontiguousarray(w, np.float32)
    if w.ndim == 1 or kind == "F32":
        writer.add_tensor(name, w)
        return
    qtype = gguf.GGMLQuantizationType[kind]
    writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)


def _write(writer, path: Path) -> None:
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except OSError as e:
        raise MemloraError(f"{path}: cannot write the GGUF file ({e})") from e
    finally:
        writer.close()


def write_model(req: TargetRequest, config: DecoderConfig, path: Path) -> None:
    """The base model: header, tokenizer and every weight in the recipe's GGUF type."""
    import gguf

    sd = {k: v.numpy() for k, v in load_hf_state_dict(req.model_dir).items()}
    writer = gguf.GGUFWriter(None, config.architecture)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(req.model_dir.name)
    _add_header(writer, config)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[req.quant]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, req.model_dir, config)
    kind = TENSOR_TYPES[req.quant]
    _tensor(writer, "token_embd.weight", sd["model.embed_tokens.weight"],
            "Q8_0" if own_recipe(req).embedding == "q8_0" else kind)
    _tensor(writer, "output_norm.weight", sd["model.norm.weight"])
    if not config.tie_embeddings:
        _tensor(writer, "output.weight", sd["lm_head.weight"], kind)
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}"
        for hf, name in NORMS.items():
            _tensor(writer, f"blk.{i}.{name}.weight", sd[f"{prefix}.{hf}.weight"])
        for module, name in PROJECTIONS.items():
            _tensor(writer, f"blk.{i}.{name}.weight", _reorder(config, module, sd[f"{prefix}.{module}.weight"]), kind)
            bias = sd.get(f"{prefix}.{module}.bias")
            if bias is not None:
                _tensor(writer, f"blk.{i}.{name}.bias", _reorder(config, module, bias))
    _write(writer, path)


def write_adapter(adapter: Adapter, config: DecoderConfig, path: Path) -> None:
    """One adapter as a GGUF LoRA file (F32 A and B; B holds PEFT's scale)."""
    import gguf

    writer = gguf.GGUFWriter(None, config.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(adapter.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # 0: llama.cpp applies B as stored, unscaled
    for module, (a, b) in adapter.weights.items():
        _, i, *rest = module.split(".")
        local = ".".join(rest)
        name = f"blk.{i}.{PROJECTIONS[local]}.weight"
        _tensor(writer, f"{name}.lora_a", a.numpy())
        _tensor(writer, f"{name}.lora_b", _reorder(config, local, b.numpy()))
    _write(writer, path)


def export_target(req: TargetRequest, bundle_dir: Path, stage: Stage = lambda s: None) -> dict:
    """Write ``bundle_dir/gguf`` and return its manifest entry (paths relative to the bundle)."""
    config = DecoderConfig.from_hf(req.model_dir, req.max_context)
    out = bundle_dir / TARGET
    out.mkdir(parents=True, exist_ok=True)
    stage(f"gguf: base model ({TENSOR_TYPES[req.quant]})")
    write_model(req, config, out / MODEL_FILE)
    adapter_files = {}
    for name, adapter in req.adapters.items():
        stage(f"gguf: LoRA {name}")
        write_adapter(adapter, config, out / f"{name}.gguf")
        adapter_files[name] = f"{TARGET}/{name}.gguf"
    return {"max_context": config.max_context, "graphs": {"base": f"{TARGET}/{MODEL_FILE}"},
            "adapter_files": adapter_files, "files": [f"{TARGET}/{MODEL_FILE}", *adapter_files.values()]}


EXPORTER = Exporter(
    name=TARGET,
    label="GGUF",
    quants=tuple(FILE_TYPES),
    own_recipe=own_recipe,
    export=export_target,
    modes=("separable",),
    refused={"fp16": "this target's float type is F32 (KV cache included)",
             "pal4": "GGUF has no palettized type"},
    check=check,
)
