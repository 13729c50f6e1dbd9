"""`run_parity`: judge every target of a bundle against the two references at the four levels.

Order of work: check that the reference model and adapters are the ones the bundle was exported from; open
the targets; run the golden set (tensor + token levels, and the quantization/conversion split); run the
memory pipeline on the scripted conversation (task level); apply the thresholds; localise every failing
target's first divergent layer; replay device traces if given.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from memlora.errors import MemloraError
from memlora.export.bundle import Bundle, load_bundle
from memlora.export.decoder import DecoderConfig
from memlora.export.lora import Adapter, load_adapters
from memlora.recipe import QuantRecipe

from . import prompts as golden_set
from .compare import CHUNK, recipe_key, run_golden
from .embedder import embedder_level, task_embedders
from .cache import ReferenceCache, reference_context, reference_key
from .localise import localise
from .reference import DecoderReference, fp32_reference
from .targets import Target, open_target
from .task import compare_task, run_task
from .thresholds import METRICS, TRACE_METRICS, Thresholds, check, load_thresholds
from .traces import check_traces, validate_file

REPORT_SCHEMA = "memlora-parity-report/1"
DECODE_TOKENS = {"full": 24, "quick": 8}
MODEL_FACTS = ("architecture", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")


def check_sources(bundle: Bundle, model_dir: Path, adapters_dir: Path) -> tuple[DecoderConfig, dict[str, Adapter]]:
    """The reference must be what the bundle was exported from: same model facts, byte-identical adapters."""
    config = DecoderConfig.from_hf(model_dir, bundle.manifest["model"]["max_context"])
    facts = {"architecture": config.architecture, "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
             "num_layers": config.num_layers, "num_heads": config.num_heads, "num_kv_heads": config.num_kv_heads,
             "head_dim": config.head_dim}
    for key in MODEL_FACTS:
        if facts[key] != bundle.manifest["model"][key]:
            raise MemloraError(f"{model_dir}: {key} is {facts[key]}, the bundle's model has "
                               f"{bundle.manifest['model'][key]}; pass the model the bundle was exported from (--model)")
    adapters = load_adapters(adapters_dir, config)
    exported = {a["name"]: a["sha256"] for a in bundle.manifest["adapters"]}
    for name, sha in exported.items():
        if name not in adapters:
            raise MemloraError(f"{adapters_dir}: no {name}/ adapter, which the bundle was exported with (--adapters)")
        if adapters[name].sha256 != sha:
            raise MemloraError(f"{adapters[name].path}: differs from the {name} adapter the bundle was exported "
                               "from (sha256 mismatch); pass the same adapters (--adapters)")
    return config, {n: a for n, a in adapters.items() if n in exported}


def _shorten(c: golden_set.Conversation) -> golden_set.Conversation:
    return replace(c, exchanges=c.exchanges[:1], questions=c.questions[:1])


def judge(metrics: dict, thresholds: Thresholds, name: str, precision: str,
          measures: frozenset[str] = METRICS) -> list[str]:
    return check(metrics, thresholds.limits(name, precision), measures)


def unchecked(entry: dict, target: Target, reference_adapters: tuple[str, ...], golden: int) -> list[str]:
    """The levels asked of `target` that checked nothing, as failures: a target compared on nothing has not
    passed (a bundle exported without adapters is skipped on every prompt the reference runs with one)."""
    failures = []
    if reference_adapters and not target.backend.adapters:
        failures.append(f"adapters: the target has none to check against the reference's "
                        f"{', '.join(sorted(reference_adapters))}: nothing to check")
    if len(entry["skipped_prompts"]) == golden:
        why = "the target lacks their adapters" if golden else "none fits the context"
        failures.append(f"golden: no golden prompt was compared ({why}): nothing to check")
    if isinstance(entry["task"], dict) and "skipped" in entry["task"]:
        failures.append(f"task: not run ({entry['task']['skipped']}): nothing to check")
    return failures


def run_parity(
    bundle_dir: Path,
    model_dir: Path,
    adapters_dir: Path,
    target_names: list[str] | None = None,
    extra_targets: list[Target] = (),
    thresholds: Thresholds | None = None,
    trace: Path | None = None,
    quick: bool = False,
    conversation: golden_set.Conversation = golden_set.GOLDEN,
    task: bool = True,
    progress: Callable[[str], None] = lambda msg: None,
    cache: Path | None = None,
) -> dict:
    """The parity report (see docs/parity.md for its keys); ``report["passed"]`` gates a release.

    `cache`: a directory (`cache.default_root()`) to replay the fp32 reference's outputs from, or record them
    in on first use; the report is the same either way (speeds aside). None runs the reference afresh."""
    from memlora.session import load_tokenizer

    thresholds = thresholds or load_thresholds()
    bundle = load_bundle(Path(bundle_dir))
    names = list(bundle.manifest["targets"]) if target_names is None else target_names
    if not names and not extra_targets and trace is None:
        empty = "the bundle has no targets" if target_names is None else "--targets is empty"
        raise MemloraError(f"{bundle.path}: nothing to check ({empty} and there is no --trace)")
    # a malformed or empty device trace is reported before any model is loaded
    records = None if trace is None else validate_file(Path(trace), bundle.manifest["model"]["vocab_size"])
    golden_set.check_templates(bundle.manifest)
    progress("check reference model and adapters")
    config, adapters = check_sources(bundle, Path(model_dir), Path(adapters_dir))
    progress(f"open targets: {', '.join(names + [t.name for t in extra_targets]) or 'none'}")
    targets = [open_target(bundle, n) for n in names] + list(extra_targets)
    tokenizer = load_tokenizer(bundle.path / "tokenizer")
    decoders: dict[QuantRecipe, DecoderReference] = {}
    for t in targets:
        key = recipe_key(t.recipe)
        if key not in decoders:
            progress(f"build decoder reference ({t.recipe.scheme})")
            decoders[key] = DecoderReference(Path(model_dir), adapters, t.recipe, config.max_context)
    decode_tokens = DECODE_TOKENS["quick" if quick else "full"]
    context = min([reference_context(Path(model_dir)), config.max_context, *(t.backend.max_context for t in targets)])
    golden = golden_set.golden_prompts(tokenizer, conversation, context, decode_tokens, quick)
    too_long = [p.label for p in golden if len(p.ids) + decode_tokens >= context]
    golden = [p for p in golden if len(p.ids) + decode_tokens < context]
    conv = _shorten(conversation) if quick else conversation
    constraints = bundle.constraints
    settings = {"golden": [[p.label, p.op, p.ids, p.shown] for p in golden], "decode_tokens": decode_tokens,
                "quick": quick, "eos_ids": sorted(bundle.eos_ids), "conversation": conv, "task": bool(task and targets),
                "constraints": bundle.manifest["files"][bundle.manifest["constraints"]["file"]],
                "embedder": bundle.manifest.get("embedder", {}).get("source_sha256")}
    ref_cache = ReferenceCache(cache, reference_key(Path(model_dir), Path(adapters_dir), bundle.path / "tokenizer",
                                                    settings), progress)

    def load_reference():
        progress("load fp32 reference (transformers+peft)")
        return fp32_reference(Path(model_dir), Path(adapters_dir))

    reference = ref_cache.reference(load_reference)
    runs, quant = run_golden(reference, decoders, targets, golden, tokenizer, bundle.eos_ids, decode_tokens,
                             constraints, progress)

    ref_task = None
    if task and targets:
        ref_embedder, embedders = task_embedders(bundle, [t.name for t in targets])
        progress("task level: memory pipeline on the reference")
        ref_task = run_task(reference, tokenizer, ref_embedder, conv, constraints)
    ref_cache.commit()

    report_targets = {}
    for t in targets:
        s = runs[t.name].summary()
        key = recipe_key(t.recipe)
        entry = {
            "precision": t.precision, "mode": t.mode, "recipe": t.recipe.to_json(),
            "tensor": s["tensor"], "tensor_by_phase": s["tensor_by_phase"], "token": s["token"],
            "task": None,
            "gap": {"quantization": quant[key].gap(), "conversion": s["conversion"],
                    "simulation": decoders[key].sim},
            "first_divergent_layer": None, "localisation": None,
            "size_bytes": t.size_bytes, "speed": s["speed"], "per_position": s["per_position"],
            "skipped_prompts": s["skipped"],
        }
        missing = set(reference.adapters) - set(t.backend.adapters)
        if ref_task is not None and missing:
            entry["task"] = {"skipped": f"target lacks adapters {sorted(missing)}"}
        elif ref_task is not None:
            progress(f"task level: memory pipeline on {t.name}")
            got = run_task(t.backend, tokenizer, embedders[t.name], conv, constraints)
            entry["task"] = compare_task(ref_task, got)
        entry["embedder"] = embedder_level(bundle, t.name, conversation)
        failures = judge(entry, thresholds, t.name, t.precision)
        worst = runs[t.name].worst_prompt[1]
        if failures and worst is not None:
            progress(f"localise {t.name}")
            tokens = worst.ids[:CHUNK]
            entry["localisation"] = localise(decoders[key].hidden_states, t.probe, tokens,
                                             worst.op if worst.op in t.backend.adapters else None,
                                             thresholds.layer_tolerance(t.precision))
            entry["localisation"]["prompt"] = worst.label
            entry["first_divergent_layer"] = entry["localisation"]["layer"]
        entry["failures"] = failures + unchecked(entry, t, reference.adapters, len(golden))
        entry["passed"] = not entry["failures"]
        report_targets[t.name] = entry

    report_traces = {}
    if records is not None:
        progress(f"replay device traces {trace}")
        for backend, result in check_traces(Path(trace), records, ref_cache.real(load_reference)).items():
            precision = bundle.recipe(backend).scheme if backend in bundle.manifest["targets"] else "fp32"
            failures = judge(result, thresholds, backend, precision, TRACE_METRICS)
            report_traces[backend] = {**result, "precision": precision, "failures": failures, "passed": not failures}

    return {
        "schema": REPORT_SCHEMA,
        "passed": all(e["passed"] for e in [*report_targets.values(), *report_traces.values()]),
        "bundle": str(bundle.path),
        "model": {k: bundle.manifest["model"][k] for k in ("name", *MODEL_FACTS)},  # what a --baseline must share
        "reference": {"fp32": "transformers+peft (fp32)", "decoder": "memlora.export.decoder with the target's "
                      "quantization simulated in torch", "model": str(model_dir), "adapters": str(adapters_dir)},
        "golden": {"quick": quick, "decode_tokens": decode_tokens, "context": context,
                   "prompts": [{"label": p.label, "op": p.op, "tokens": len(p.ids)} for p in golden],
                   "skipped_longer_than_context": too_long},
        "targets": report_targets,
        "traces": report_traces,
        "reference_task": None if ref_task is None else ref_task.to_json(),
    }
