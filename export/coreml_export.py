"""The Core ML target: the export-friendly decoder as one multifunction mlprogram with a stateful KV cache.

Program interface (iOS 18 / macOS 15, fp16 compute; T = new tokens, S = start + T, both 1..max_context)::

    inputs   input_ids [1, T] int32, causal_mask [1, 1, T, S] fp16 (0 = attend, -inf = masked)
    states   decoder_layers_{i}_self_attn_{k,v}_cache [1, kv_heads, max_context + 1, head_dim] fp16
    outputs  logits [1, T, vocab] fp16

The write position is not a value inside the program but the shape of ``causal_mask``: the new keys and
values go to cache rows ``S - T .. S - 1`` and attention reads rows ``0 .. S - 1`` (Apple's pattern for
stateful LLMs: shape-derived slices convert to ``slice_update`` / ``slice_by_index`` with no
data-dependent shapes, and attention cost grows with the sequence, not with the cache). The cache has one
row more than the usable context because torch.export guards a slice that covers a whole buffer.

One package, one function per adapter (``base`` is the model without adapter):

- *separable*: every adapter function is the base decoder plus a float16 low-rank branch holding that
  adapter; ``save_multifunction`` stores the shared base weights once (``size_bytes`` in the manifest entry
  reports the package against the same functions saved as separate models).
- *merged*: every adapter function has the adapter folded into its weights (then quantized); only
  weights no adapter touches (embeddings, norms) are shared. Still one package, so an app loads one file
  and selects the function by name either way.

Quantization (base weights -- projections and the embedding/LM head; LoRA branches stay fp16), applied
to the converted program with ``coremltools.optimize.coreml``:

- ``int8``: symmetric per-output-channel linear quantization (``constexpr_blockwise_shift_scale``).
- ``int4``: symmetric per-block linear quantization, blocks of ``block_size`` (32) along the input axis.
- ``pal4``: 4-bit palettization, one 16-entry table per group of 16 output channels, tables computed by
  `palettize_group` (a deterministic 1-D k-means) and handed to coremltools as a custom LUT function.

A weight whose shape the scheme cannot tile (int4: input size not a multiple of the block; pal4: output
size not a multiple of 16) stays fp16 (``uneven="skip"`` in the recipe); SmolLM2's weights all tile.
- ``fp16`` (``fp32`` is accepted as its alias: Core ML stores and computes this model in fp16).

`memlora.export.quant.quantize_decoder` applies the same recipe to the torch decoder, so a Core ML model can
be compared with a torch model carrying the same weights, isolating conversion errors from quantization loss.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from memlora.errors import MemloraError
from memlora.mlpackage import FP16, BlobFile, load_spec, parse_type
from memlora.recipe import QuantRecipe

from . import quant
from .calibrate import load_decoder
from .decoder import Decoder, LoraSlots, grouped_attention
from .lora import Adapter, fill_slots, slot_arrays, unify_slots
from .target import Exporter, Stage, TargetRequest

TARGET = "coreml"
PACKAGE = "model.mlpackage"
BASE_FUNCTION = "base"
QUANTS = ("fp16", "fp32", "int8", "int4", "pal4")
PAL_GROUP = 16
PAL_BITS = 4
LINEAR_BITS = {"int8": 8, "int4": 4}
# Names of quantized weights in the converted program (torch parameter paths, '.' -> '_').
BASE_WEIGHT = re.compile(r"(_proj_weight|embed_tokens_weight|lm_head_weight)")


class CoreMLStep(nn.Module):
    """The decoder with the cache slice taken from the mask's shape; the module the program is traced from."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        t, end = input_ids.shape[1], causal_mask.shape[-1]
        start = end - t
        cos, sin = dec.rope(torch.arange(start, end))

        def attend(i: int, q, k, v):
            attn = dec.layers[i].self_attn
            attn.k_cache[:, :, start:end] = k.transpose(1, 2)
            attn.v_cache[:, :, start:end] = v.transpose(1, 2)
            return grouped_attention(q.transpose(1, 2), attn.k_cache[:, :, :end], attn.v_cache[:, :, :end], causal_mask)

        x, _ = dec.run_layers(dec.embed(input_ids), cos, sin, attend)
        return dec.head(x)


def build_decoder(req: TargetRequest, adapter: Adapter | None, slots: LoraSlots | None) -> Decoder:
    """The decoder for one function: base (no adapter), base + LoRA branch (`slots` given), or the adapter
    merged into the weights (no slots: the program has no low-rank branch at all)."""
    merged = adapter is not None and slots is None
    lora = LoraSlots(adapter.targets, adapter.rank) if merged else slots
    decoder = load_decoder(req.model_dir, req.max_context + 1, lora, req.calibration)
    if decoder.config.max_context < 2:
        raise MemloraError(f"{req.model_dir}: max_context {decoder.config.max_context} is too small")
    if adapter is None:
        return decoder
    fill_slots(decoder, adapter)
    if not merged:
        return decoder
    return decoder.merged()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools prints progress bars and warnings for every pass; keep the CLI's own progress readable."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


def convert(decoder: Decoder):
    """Trace `decoder` with torch.export and convert it to an fp16 mlprogram with the cache as states."""
    import coremltools as ct

    context = decoder.config.max_context - 1
    step = CoreMLStep(decoder).eval()
    t = torch.export.Dim("T", min=1, max=context)
    s = torch.export.Dim("S", min=1, max=context)
    with torch.no_grad():
        program = torch.export.export(
            step,
            (torch.zeros(1, 3, dtype=torch.int32), torch.zeros(1, 1, 3, 5)),
            dynamic_shapes=({1: t}, {2: t, 3: s}),
            strict=False,
        ).run_decompositions({})
    flexible = ct.RangeDim(1, context, default=1)
    with _quiet():
        model = ct.convert(
            program,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16,
            inputs=[
                ct.TensorType(name="input_ids", shape=(1, flexible), dtype=np.int32),
                ct.TensorType(name="causal_mask", shape=(1, 1, flexible, flexible), dtype=np.float16),
            ],
            outputs=[ct.TensorType(name="logits", dtype=np.float16)],
            skip_model_load=True,
        )
    decoder.reset_cache()  # tracing wrote example keys into the buffers
    return model


# ---- quantization ---------------------------------------------------------------------------------------


def recipe(req: TargetRequest) -> QuantRecipe:
    """fp16 weights and compute, or the base weights (projections, embedding/LM head) compressed."""
    notes = "LoRA branches, norms and RoPE tables stay fp16"
    if req.quant in ("fp16", "fp32"):
        return QuantRecipe("fp16", op="fp16 mlprogram", compute="fp16",
                           notes="fp32 is an alias: Core ML stores and computes this model in fp16" if req.quant == "fp32" else "")
    if req.quant == "pal4":
        return QuantRecipe("pal4", op="constexpr_lut_to_dense", compute="fp16", weights="palette", bits=PAL_BITS,
                           block_size=PAL_GROUP, uneven="skip", lm_head=True, embedding="as_weights",
                           notes=f"one 16-entry table per {PAL_GROUP} output channels (1-D k-means); {notes}")
    return QuantRecipe(req.quant, op="constexpr_blockwise_shift_scale", compute="fp16", weights="linear",
                       bits=LINEAR_BITS[req.quant], block_size=req.block_size if req.quant == "int4" else None,
                       scale_rule="restricted", uneven="skip", lm_head=True, embedding="as_weights", notes=notes)


def compress(model, recipe: QuantRecipe):
    """Quantize the base weights of a converted model as `recipe` says (LoRA branches, norms and RoPE tables
    stay fp16)."""
    import coremltools.optimize.coreml as cto

    if recipe.weights == "float":
        return model
    if recipe.weights == "palette":
        config = cto.OpPalettizerConfig(
            mode="custom", lut_function=functools.partial(quant.palettize_group, bits=recipe.bits),
            granularity="per_grouped_channel", group_size=recipe.block_size, channel_axis=0, weight_threshold=0,
        )
        run = cto.palettize_weights
    else:
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype=f"int{recipe.bits}",
            granularity="per_block" if recipe.block_size else "per_channel", block_size=recipe.block_size or 0,
            weight_threshold=0,
        )
        run = cto.linear_quantize_weights
    with _quiet():
        names = [n for n, meta in cto.get_weights_metadata(model, weight_threshold=0).items()
                 if BASE_WEIGHT.search(n) and quant.quantizable(recipe, meta.val.shape)]
        if not names:
            raise MemloraError("Core ML export: no base weights found to quantize in the converted program")
        return run(model, cto.OptimizationConfig(op_name_configs={n: config for n in names}))


# ---- packaging ------------------------------------------------------------------------------------------


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def weight_file(package: Path) -> Path:
    return Path(package) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def _digest(values: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(values, dtype=np.float16).tobytes()).digest()


def locate(package: Path, tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, bool]]:
    """Find each tensor, by its fp16 content, among the weight blobs of a converted program:
    name -> (blob offset, stored transposed). The converter renames and transposes constants (a LoRA
    ``x @ A`` becomes a ``linear`` with weight ``A^T``), so content, not names, identifies them; the
    tensors must be distinct (templates are filled with random values)."""
    wanted: dict[bytes, tuple[str, bool]] = {}
    for name, t in tensors.items():
        wanted[_digest(t)] = (name, False)
        if t.ndim == 2:
            wanted.setdefault(_digest(t.T), (name, True))
    _, spec = load_spec(package)
    fn = spec.mlProgram.functions[spec.description.defaultFunctionName or "main"]
    blobs = BlobFile(weight_file(package))
    found: dict[str, tuple[int, bool]] = {}
    for op in fn.block_specializations[fn.opset].operations:
        value = op.attributes["val"] if op.type == "const" else None
        if value is None or value.WhichOneof("value") != "blobFileValue":
            continue
        t = parse_type(value.type)
        if t.dtype != FP16:
            continue
        hit = wanted.get(_digest(blobs.read(value.blobFileValue.offset, int(np.prod(t.shape)))))
        if hit is not None:
            if hit[0] in found:
                raise MemloraError(f"{package}: weight {hit[0]} appears twice in the converted program")
            found[hit[0]] = (value.blobFileValue.offset, hit[1])
    missing = sorted(set(tensors) - set(found))
    if missing:
        raise MemloraError(f"{package}: weights {missing[:3]} not found in the converted program")
    return found


def patch(package: Path, located: dict[str, tuple[int, bool]], values: dict[str, np.ndarray]) -> None:
    """Overwrite located fp16 weight blobs of a package in place with new values of the same shape."""
    path = weight_file(package)
    spans = {name: BlobFile(path).span(located[name][0]) for name in values}
    with path.open("r+b") as fh:
        for name, v in values.items():
            data = np.ascontiguousarray((v.T if located[name][1] else v).astype(np.float16))
            code, size, offset = spans[name]
            if code != 1 or size != data.nbytes:
                raise MemloraError(f"{path}: blob for {name} holds {size} bytes of type {code}, not {data.nbytes} fp16")
            fh.seek(offset)
            fh.write(data.tobytes())


def save_functions(models: dict[str, Path], out: Path) -> None:
    """Combine single-function packages into one multifunction package (shared weights stored once)."""
    import coremltools as ct

    desc = ct.utils.MultiFunctionDescriptor()
    for name, path in models.items():
        desc.add_function(str(path), src_function_name="main", target_function_name=name)
    desc.default_function_name = BASE_FUNCTION
    with _quiet():
        ct.utils.save_multifunction(desc, str(out))


def compress_package(src: Path, dest: Path, recipe: QuantRecipe) -> None:
    import coremltools as ct

    with _quiet():
        model = ct.models.MLModel(str(src), skip_model_load=True)
    compress(model, recipe).save(str(dest))


def _lora_values(decoder: Decoder, adapter: Adapter | None) -> dict[str, np.ndarray]:
    return slot_arrays(decoder, adapter, lambda module, ab: f"{module}.lora_{ab}")


def _merged_values(req: TargetRequest, adapter: Adapter) -> dict[str, np.ndarray]:
    modules = dict(build_decoder(req, adapter, None).named_modules())
    return {f"{m}.weight": modules[m].weight.detach().numpy() for m in adapter.weights}


@dataclass
class Template:
    """The decoder converted once; every function of the package is a copy with other weight values.

    Separable: the LoRA slots hold random values (so each slot's constants can be found by content) and
    a function is the template with an adapter's slot values written in (zeros for the base function).
    Merged: the template is the base model and a function gets its adapter's merged projection weights.
    """

    decoder: Decoder
    path: Path
    tensors: dict[str, np.ndarray]
    separable: bool

    @property
    def max_context(self) -> int:
        return self.decoder.config.max_context - 1


def make_template(req: TargetRequest, workdir: Path) -> Template:
    separable = req.mode == "separable" and bool(req.adapters)
    decoder = build_decoder(req, None, unify_slots(req.adapters.values()) if separable else None)
    if separable:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in decoder.lora_modules().values():
                m.lora_a.copy_(torch.randn(m.lora_a.shape, generator=generator))
                m.lora_b.copy_(torch.randn(m.lora_b.shape, generator=generator))
        tensors = {f"{name}.lora_{ab}": getattr(m, f"lora_{ab}").detach().numpy()
                   for name, m in decoder.lora_modules().items() for ab in "ab"}
    else:
        modules = dict(decoder.named_modules())
        touched = sorted({m for a in req.adapters.values() for m in a.weights})
        tensors = {f"{m}.weight": modules[m].weight.detach().numpy() for m in touched}
    path = Path(workdir) / "template.mlpackage"
    convert(decoder).save(str(path))
    return Template(decoder, path, tensors, separable)


def function_packages(template: Template, req: TargetRequest, workdir: Path,
                      stage: Stage = lambda s: None) -> dict[str, Path]:
    """One single-function package per function (base first), patched and quantized as `req` asks."""
    workdir = Path(workdir)
    rec = recipe(req)
    quantized = rec.weights != "float"
    source = template.path
    if template.separable and quantized:  # LoRA constants stay fp16: quantize once, patch the copies
        stage(f"coreml: quantize ({req.quant})")
        source = workdir / f"template-{req.quant}.mlpackage"
        compress_package(template.path, source, rec)
    located = locate(source, template.tensors)
    singles: dict[str, Path] = {}
    for name, adapter in [(BASE_FUNCTION, None), *req.adapters.items()]:
        stage(f"coreml: function {name}")
        path = workdir / f"{name}-{req.mode}-{req.quant}.mlpackage"
        shutil.copytree(source, path)
        if template.separable:
            patch(path, located, _lora_values(template.decoder, adapter))
        elif adapter is not None:
            patch(path, located, _merged_values(req, adapter))
        if quantized and not template.separable:
            compressed = path.with_name(path.stem + "-q.mlpackage")
            compress_package(path, compressed, rec)
            path = compressed
        singles[name] = path
    return singles


def refusal(req: TargetRequest) -> str | None:
    if BASE_FUNCTION in req.adapters:
        return f"an adapter may not be named {BASE_FUNCTION!r} (the base function)"
    return None


def write_package(template: Template, req: TargetRequest, bundle_dir: Path, workdir: Path,
                  stage: Stage = lambda s: None) -> dict:
    """Build the multifunction package into ``bundle_dir/coreml`` from a template; the manifest entry."""
    singles = function_packages(template, req, workdir, stage)
    stage("coreml: multifunction package")
    package = Path(bundle_dir) / TARGET / PACKAGE
    package.parent.mkdir(parents=True, exist_ok=True)
    if package.exists():
        shutil.rmtree(package)
    save_functions(singles, package)
    return {
        "max_context": template.max_context,
        "graphs": {BASE_FUNCTION: f"{TARGET}/{PACKAGE}"},
        "functions": {BASE_FUNCTION: BASE_FUNCTION, **{n: n for n in req.adapters}},
        "deployment_target": "iOS18/macOS15",
        "compute_precision": "fp16",
        "size_bytes": {"multifunction": dir_size(package), "separate_models": sum(map(dir_size, singles.values()))},
        "files": sorted(p.relative_to(bundle_dir).as_posix() for p in package.rglob("*") if p.is_file()),
    }


def export_target(req: TargetRequest, bundle_dir: Path, stage: Stage = lambda s: None) -> dict:
    """Write the Core ML target into ``bundle_dir/coreml/model.mlpackage``; return its manifest entry."""
    with tempfile.TemporaryDirectory(prefix="memlora-coreml-") as tmp:
        stage("coreml: convert")
        template = make_template(req, Path(tmp))
        return write_package(template, req, bundle_dir, Path(tmp), stage)


EXPORTER = Exporter("coreml", "Core ML", QUANTS, recipe, export_target, check=refusal)
