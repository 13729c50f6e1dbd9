"""The retrieval embedder in the bundle: one export-friendly torch module for a sentence-transformers BERT, and
one function per target that turns it into that runtime's artifact.

Why a module of our own rather than tracing transformers' BertModel: it keeps the graph to what the three
runtimes all run (embedding gathers, linears, LayerNorm, exact GELU, softmax attention with an additive
padding mask), and it puts mean pooling and L2 normalisation inside the graph, so an app feeds token ids
and a 0/1 mask and reads unit vectors -- nothing about pooling is left for it to get wrong. The weights are
the model's own, read with transformers at export time; `memlora.embed.Embedder` (transformers) is the
reference parity compares with.

Every artifact takes ``input_ids`` and ``attention_mask`` [batch, tokens] (tokens 1..max_length; batch
1..`MAX_BATCH`, except ExecuTorch: batch 1, since XNNPACK reshapes take one dynamic dimension and a head split
with a dynamic batch needs two; int64 for ONNX and ExecuTorch, int32 for Core ML) and returns
``sentence_embedding`` [batch, dim]. Precision: ONNX fp32, or int8 MatMulNBits (blocks of 32) when the bundle is quantized; Core ML
fp16; ExecuTorch fp32 on XNNPACK.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from memlora.checksum import sha256_file
from memlora.embed import REQUIRED_FILES, max_length
from memlora.errors import MemloraError
from memlora.recipe import QuantRecipe

from .target import Stage

DIR = "embedder"
OUTPUT = "sentence_embedding"
MAX_BATCH = 32
"""The largest batch an artifact takes (`memlora.embed.BATCH_SIZE`: what the pipeline embeds at once)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
BLOCK = 32
"""MatMulNBits block size of the int8 ONNX embedder (MiniLM's 384 and 1536 are multiples of it)."""
ARCHITECTURES = ("bert",)


@dataclass(frozen=True)
class EmbedderSource:
    """A checked sentence-transformers BERT folder: what the manifest says about it and where it came from."""

    path: Path
    name: str
    dim: int
    max_length: int
    sha256: str
    pad_id: int


def read_source(path: Path) -> EmbedderSource:
    """Check `path` is a mean-pooled BERT-family sentence-transformers model this exporter reproduces exactly;
    refuse anything else with one error naming the file."""
    path = Path(path)
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise MemloraError(f"{path / name}: missing; --embedder needs a sentence-transformers model folder")
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise MemloraError(f"{path / 'config.json'}: not valid JSON ({e})") from e
    arch = config.get("model_type")
    if arch not in ARCHITECTURES:
        raise MemloraError(f"{path / 'config.json'}: model_type {arch!r} is not supported as an embedder "
                           f"(BERT family only: {', '.join(ARCHITECTURES)})")
    for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if config.get(key, want) != want:
            raise MemloraError(f"{path / 'config.json'}: {key} {config[key]!r} is not supported (only {want!r})")
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
        raise MemloraError(f"{pooling}: not mean pooling; the bundle's embedder mean-pools like memlora's retrieval")
    return EmbedderSource(path, path.parent.name if path.name == "model" else path.name,
                          int(config["hidden_size"]), max_length(path), sha256_file(path / "model.safetensors"),
                          int(config.get("pad_token_id", 0)))


class _Layer(nn.Module):
    """One BERT encoder layer (post-norm), attention over the additive mask `bias`."""

    def __init__(self, layer, heads: int):
        super().__init__()
        att = layer.attention
        self.q, self.k, self.v = att.self.query, att.self.key, att.self.value
        self.out, self.norm1 = att.output.dense, att.output.LayerNorm
        self.up, self.down, self.norm2 = layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm
        self.heads = heads

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        d = x.shape[-1] // h

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, h, d).transpose(1, 2)

        scores = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) * (1.0 / math.sqrt(d)) + bias
        att = (torch.softmax(scores, dim=-1) @ split(self.v(x))).transpose(1, 2).reshape(b, -1, h * d)
        x = self.norm1(x + self.out(att))
        return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))


class SentenceEncoder(nn.Module):
    """BERT with token type 0, mean pooling over the mask and L2 normalisation: ids -> unit vectors."""

    def __init__(self, source: EmbedderSource):
        super().__init__()
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(source.path, local_files_only=True).eval()
        emb = bert.embeddings
        self.word, self.norm = emb.word_embeddings, emb.LayerNorm
        self.register_buffer("position", emb.position_embeddings.weight[: source.max_length].detach().clone())
        self.register_buffer("token_type", emb.token_type_embeddings.weight[0].detach().clone())
        self.layers = nn.ModuleList(_Layer(layer, bert.config.num_attention_heads) for layer in bert.encoder.layer)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.word(input_ids) + self.position[: input_ids.shape[1]] + self.token_type)
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        mean = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return mean / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _example(source: EmbedderSource, dtype: torch.dtype, max_batch: int = MAX_BATCH):
    """Example inputs (batch 2, 5 tokens, one padded; batch 1 when `max_batch` is 1) and the dynamic dims."""
    tokens = torch.export.Dim("tokens", min=1, max=source.max_length)
    ids = torch.tensor([[3, 7, 8, 9, 4], [3, 7, 4, 0, 0]][:max_batch], dtype=dtype)
    dims = {1: tokens} if max_batch == 1 else {0: torch.export.Dim("batch", min=1, max=max_batch), 1: tokens}
    return (ids, (ids != 0).to(dtype)), (dims, dims)


# ---- one function per target: (encoder, source, quant, out dir) -> (files, recipe, input dtype, max batch) ----


def export_onnx(encoder: SentenceEncoder, source: EmbedderSource, quant: str, out: Path):
    """onnxruntime graph; int8 MatMulNBits on every linear when the bundle's decoder is quantized."""
    import onnx_ir as ir
    import onnxscript

    from . import onnx_export

    args, shapes = _example(source, torch.int64)
    program = torch.onnx.export(encoder, args, dynamo=True, verbose=False, optimize=False, dynamic_shapes=shapes,
                                input_names=["input_ids", "attention_mask"], output_names=[OUTPUT],
                                opset_version=onnx_export.OPSET)
    onnxscript.optimizer.optimize(program.model, input_size_limit=1 << 40, output_size_limit=1 << 40)
    bits = "fp32" if quant == "fp32" else "int8"
    model = onnx_export.quantize(ir.to_proto(program.model), bits, BLOCK)
    if bits == "fp32":
        recipe = QuantRecipe("fp32", op="MatMul")
    else:
        recipe = QuantRecipe("int8", op="com.microsoft::MatMulNBits (accuracy_level 4)", weights="linear", bits=8,
                             block_size=BLOCK, scale_rule="max_to_min", activations="int8_block", act_block=BLOCK,
                             notes="every linear; token/position embeddings, LayerNorm and attention stay float")
    return onnx_export.save_graph(model, out / "embedder.onnx"), recipe, "int64", MAX_BATCH


def export_coreml(encoder: SentenceEncoder, source: EmbedderSource, quant: str, out: Path):
    """fp16 mlprogram (iOS 18), checked on Linux by the MIL interpreter."""
    import coremltools as ct
    import numpy as np

    from .coreml_export import _quiet

    args, shapes = _example(source, torch.int32)
    with torch.no_grad():
        program = torch.export.export(encoder, args, dynamic_shapes=shapes, strict=False).run_decompositions({})
    shape = (ct.RangeDim(1, MAX_BATCH, default=1), ct.RangeDim(1, source.max_length, default=8))
    with _quiet():
        model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                           compute_precision=ct.precision.FLOAT16, skip_model_load=True,
                           inputs=[ct.TensorType(name=n, shape=shape, dtype=np.int32)
                                   for n in ("input_ids", "attention_mask")],
                           outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)])
        model.save(str(out / "embedder.mlpackage"))
    files = sorted(p for p in (out / "embedder.mlpackage").rglob("*") if p.is_file())
    return files, QuantRecipe("fp16", op="fp16 mlprogram", compute="fp16"), "int32", MAX_BATCH


def export_executorch(encoder: SentenceEncoder, source: EmbedderSource, quant: str, out: Path):
    """One ``.pte`` with every linear on XNNPACK (the decoder's lowering, which refuses a portable linear)."""
    from .executorch_export import lower, write_program

    args, shapes = _example(source, torch.int64, max_batch=1)
    with torch.no_grad():
        program = torch.export.export(encoder, args, dynamic_shapes=shapes, strict=True)
    et, _ = lower({"forward": program}, {}, separate=False)
    return write_program(et, out / "embedder.pte"), QuantRecipe("fp32", op="XNNPACK fp32 linear"), "int64", 1


EXPORTS: dict[str, Callable] = {"onnx": export_onnx, "coreml": export_coreml, "executorch": export_executorch}


def copy_tokenizer(source: EmbedderSource, bundle_dir: Path) -> list[str]:
    """The embedder's own tokenizer files (WordPiece: not the decoder's), copied under ``embedder/tokenizer``."""
    from .bundle import copy_files

    return copy_files(source.path, bundle_dir, f"{DIR}/tokenizer", TOKENIZER_FILES)


def export_embedder(source: EmbedderSource, targets: dict[str, str], bundle_dir: Path,
                    stage: Stage = lambda s: None) -> dict:
    """Write the embedder for each target (name -> the bundle's --quant) and return the manifest's
    ``embedder`` section: everything an app needs to reproduce the embedding."""
    encoder = SentenceEncoder(source).eval()
    entries = {}
    for name, quant in targets.items():
        stage(f"embedder: {name}")
        out = bundle_dir / DIR / name
        out.mkdir(parents=True, exist_ok=True)
        files, recipe, dtype, max_batch = EXPORTS[name](encoder, source, quant, out)
        main = next(f for f in files if f.suffix in (".onnx", ".pte")) if name != "coreml" else out / "embedder.mlpackage"
        entries[name] = {"file": main.relative_to(bundle_dir).as_posix(), "input_dtype": dtype, "max_batch": max_batch,
                         "quantization": recipe.to_json(),
                         "files": sorted(f.relative_to(bundle_dir).as_posix() for f in files)}
    stage("embedder: tokenizer")
    return {
        "name": source.name, "architecture": "bert", "source": str(source.path), "source_sha256": source.sha256,
        "dim": source.dim, "max_length": source.max_length,
        "pooling": "mean", "normalization": "l2", "in_graph": True,
        "inputs": ["input_ids", "attention_mask"], "output": OUTPUT,
        "tokenizer": {"dir": f"{DIR}/tokenizer", "files": copy_tokenizer(source, bundle_dir), "pad_id": source.pad_id,
                      "padding": "longest", "truncation": source.max_length, "special_tokens": True},
        "targets": entries,
    }
