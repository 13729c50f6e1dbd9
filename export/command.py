"""`memlora export`: turn a HF model and its PEFT adapters into a bundle for one or more runtimes.

Library function `export_bundle`; `main` is the thin CLI wrapper (registered as `memlora export`) that
shows one progress bar over the stages. Each target is an `memlora.export.target.Exporter`; every request is
checked against every chosen target before any is built.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from memlora import __version__
from memlora.errors import MemloraError
from memlora.options import Adapters, Model

GOLDEN_TOKENS = 48
"""Golden traces stop after this many tokens: enough to catch a drift, small enough to replay on a phone."""
CALIBRATION_SAMPLES = 16
"""--calibrate's default prompts per operation (48 sequences in all; docs/calibration.md)."""


def reference_backend(model_dir: Path, adapters_dir: Path):
    """The transformers+peft fp32 pipeline: golden traces are what the user's reference produces."""
    from memlora.runtime.torch_backend import TorchBackend

    return TorchBackend(model_dir, adapters_dir, mode="separable")


def export_bundle(
    model_dir: Path,
    adapters_dir: Path,
    targets: list[str],
    mode: str,
    quant: str,
    block_size: int,
    out: Path,
    max_context: int = 2048,
    golden_tokens: int = GOLDEN_TOKENS,
    embedding_int8: bool = False,
    stage: Callable[[str], None] = lambda s: None,
    embedder: Path | None = None,
    calibration_samples: int = 0,
    int8_projections: tuple[str, ...] | None = None,
    calibration_method: str = "gptq",
) -> Path:
    """Export `targets` into a new bundle at `out` (written aside, renamed into place when complete).

    Every check that needs no export runs first -- the adapters against the model as the exporters and the
    golden reference (transformers+peft) read them, the tokenizer (its output constraints compiled), each
    target's mode and quant -- so bad input fails in seconds, not after the targets are built. `embedder` (a sentence-transformers BERT folder)
    is exported for every target too; None leaves the bundle without one (retrieval then runs on torch).
    `calibration_samples` > 0: base weights calibrated by `calibration_method` (GPTQ or AWQ,
    `memlora.export.calibrate`), computed once per grid the targets' recipes share, then packed by each
    target as usual. `int8_projections`: what a lower-bit recipe
    keeps at 8 bits (None: each target's own choice)."""
    from memlora import constrain, pipeline, prompts
    from memlora.adapters import load_checked_adapters
    from memlora.session import load_tokenizer

    from . import bundle, calibrate, chat_format, golden, side_artifacts, target
    from . import embedder as embedder_export
    from .decoder import DecoderConfig
    from .lora import load_adapters

    if not targets:
        raise MemloraError(f"no target given; choose from {', '.join(target.TARGETS)}")
    exporters = {name: target.load(name) for name in targets}
    if block_size < 16 or block_size & (block_size - 1):
        raise MemloraError(f"--block-size {block_size}: must be a power of two, at least 16 (MatMulNBits, "
                           "torchao and Core ML all quantize in such blocks)")
    if max_context <= 0:
        raise MemloraError(f"--max-context {max_context}: must be a positive number of tokens")
    model_dir, adapters_dir = Path(model_dir), Path(adapters_dir)
    bundle.check_out(out)
    stage("check model and adapters")
    config = DecoderConfig.from_hf(model_dir, max_context)
    load_checked_adapters(adapters_dir, model_dir)
    adapters = load_adapters(adapters_dir, config)
    tokenizer = load_tokenizer(model_dir)
    stage("output constraints")
    constraints = constrain.for_tokenizer(tokenizer)  # compiled once per tokenizer; refuses a non-byte-level one
    chat = chat_format.chat_format(tokenizer, model_dir, [(m[0]["content"], m[1]["content"])
                                                          for _, m, _ in golden.golden_messages()])
    source = None if embedder is None else embedder_export.read_source(embedder)
    request = target.TargetRequest(model_dir, adapters, mode, quant, block_size, config.max_context, embedding_int8,
                                   calibration_samples, calibration_method=calibration_method,
                                   int8_projections=int8_projections)
    for exporter in exporters.values():
        target.check_request(exporter, request)
    model = bundle.model_entry(config, model_dir.name, tokenizer)
    embedded = {name: quant for name in exporters if name in embedder_export.EXPORTS}  # gguf: none yet
    side_job = partial(side_artifacts.SideJob, model_dir, adapters_dir, source, embedded, golden_tokens=golden_tokens,
                       eos_ids=tuple(model["special_tokens"]["eos_ids"]), reference=reference_backend)
    with bundle.staging(out) as tmp, side_artifacts.running(side_job(bundle_dir=tmp)) as side:
        entries = {}
        for name, exporter in exporters.items():
            recipe = exporter.recipe(request)
            req, calibrated = request, {}
            if recipe.calibration != "none":  # computed once per grid the targets share (calibrate's memo)
                stage(f"calibrate: {recipe.calibration.upper()} for int{recipe.bits} {recipe.scale_rule} "
                      f"({recipe.calibration_samples} prompts per operation)")
                calibration = calibrate.calibrate(model_dir, adapters, recipe)
                req = replace(request, calibration=calibration)
                calibrated = {"calibration": calibration.manifest_entry(recipe)}
            entries[name] = {"mode": mode, "quantization": recipe.to_json(), **calibrated,
                             **exporter.export(req, tmp, stage)}
        stage("tokenizer")
        tok_entry = bundle.copy_tokenizer(model_dir, tmp)
        constraints_entry = bundle.write_constraints(constraints, tmp)
        stage("golden traces and embedder (beside the targets)")
        built = side.result()
        stage(f"checksums and manifest (beside: {', '.join(f'{n} {s:.1f} s' for n, s in built.seconds.items())})")
        manifest = {
            "schema_version": bundle.SCHEMA_VERSION,
            "memlora_version": __version__,
            "model": model,
            "tokenizer": tok_entry,
            "prompts": {"source": "memlora.prompts", "templates": prompts.TEMPLATES, "chat": chat,
                        "retrieval": {"top_k": pipeline.TOP_K, "answer_k": pipeline.ANSWER_K,
                                      "max_shown": prompts.MAX_SHOWN}},
            "generation": {"decoding": "greedy", "trace_top_k": 5,
                           "operations": golden.operation_settings(tuple(adapters))},
            "constraints": constraints_entry,
            "adapters": [a.manifest_entry() for a in adapters.values()],
            "targets": entries,
            "golden": {"file": side_artifacts.GOLDEN_FILE, "reference": "torch (transformers+peft, fp32)",
                       "max_new_tokens": golden_tokens, "records": built.golden_records},
            **({} if built.embedder is None else {"embedder": built.embedder}),
        }
        return bundle.publish(tmp, out, manifest)


def main(
    model: Model = None,
    adapters: Adapters = None,
    target: Annotated[str, typer.Option("--target", help="onnx, executorch, coreml, gguf (comma-separated)")] = "onnx",
    mode: Annotated[str, typer.Option("--mode", help="merged | separable adapters")] = "separable",
    quant: Annotated[str, typer.Option("--quant", help="fp32 | fp16 | int8 | int4 | pal4 (base weights; LoRA stays float; "
                                       "fp16 and pal4: coreml)")] = "fp32",
    block_size: Annotated[int, typer.Option("--block-size", help="int4 quantization block size (MatMulNBits)")] = 32,
    out: Annotated[Optional[Path], typer.Option("--out", help="bundle directory to write")] = None,
    max_context: Annotated[int, typer.Option("--max-context", help="KV cache length of the exported model")] = 2048,
    embedding_int8: Annotated[bool, typer.Option("--embedding-int8", help="int8 token embeddings (executorch)")] = False,
    embedder: Annotated[Optional[Path], typer.Option("--embedder", help="sentence-transformers BERT folder to embed "
                                                     "with (default: the packaged all-MiniLM-L6-v2)")] = None,
    no_embedder: Annotated[bool, typer.Option("--no-embedder", help="no embedder in the bundle (retrieval runs "
                                              "on torch)")] = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="calibrated base weights from the memory operations' "
                                            "own prompts instead of round-to-nearest (int4, int8; separable)")] = False,
    calibration_method: Annotated[str, typer.Option("--calibration-method", help="gptq | awq, with --calibrate")] = "gptq",
    calibration_samples: Annotated[Optional[int], typer.Option(
        "--calibration-samples", help=f"calibration prompts per operation with --calibrate [{CALIBRATION_SAMPLES}]")] = None,
    int8_projections: Annotated[Optional[str], typer.Option(
        "--int8-projections", help="projections an int4 recipe keeps at 8 bits, comma-separated (q_proj ... "
        "down_proj, lm_head; '' for none) [executorch: k_proj,v_proj,up_proj,down_proj,lm_head]")] = None,
) -> None:
    """Export the model and its adapters into a bundle (manifest, tokenizer, artifacts, golden traces)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from memlora.paths import default_model_dir
    from memlora.session import default_adapters

    model_dir = Path(model) if model else default_model_dir()
    adapters_dir = adapters or default_adapters()
    if adapters_dir is None:
        raise MemloraError("no adapters: pass --adapters DIR (with extract/, mem_update/, answer/)")
    if out is None:
        raise MemloraError("pass --out DIR for the bundle")
    if embedder is not None and no_embedder:
        raise MemloraError(f"--embedder {embedder} and --no-embedder: pass one")
    if not no_embedder and embedder is None:
        from memlora.embed import package_model_dir

        embedder = package_model_dir()
    if calibration_samples is not None and not calibrate:
        raise MemloraError(f"--calibration-samples {calibration_samples} needs --calibrate")
    samples = (CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples) if calibrate else 0
    if calibrate and samples <= 0:
        raise MemloraError(f"--calibration-samples {samples}: must be a positive number of prompts")
    if calibration_method not in ("gptq", "awq"):
        raise MemloraError(f"--calibration-method {calibration_method}: choose gptq or awq")
    if calibration_method != "gptq" and not calibrate:
        raise MemloraError(f"--calibration-method {calibration_method} needs --calibrate")
    targets = [t.strip() for t in target.split(",") if t.strip()]
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()) as progress:
        current: list = []

        def stage(name: str) -> None:
            """Complete the previous stage's bar (and log its time: CI logs show no live bars), start `name`."""
            if current:
                task = progress.tasks[-1]
                progress.update(current[-1], total=1, completed=1)
                progress.console.log(f"{task.description}: {task.elapsed:.1f} s")
            current.append(progress.add_task(name, total=None))

        path = export_bundle(model_dir, adapters_dir, targets, mode, quant, block_size, out, max_context,
                             embedding_int8=embedding_int8, stage=stage, embedder=embedder,
                             calibration_samples=samples, calibration_method=calibration_method,
                             int8_projections=None if int8_projections is None else
                             tuple(p.strip() for p in int8_projections.split(",") if p.strip()))
        stage("done")
        progress.update(current[-1], total=1, completed=1)
    typer.echo(f"bundle written to {path}")
