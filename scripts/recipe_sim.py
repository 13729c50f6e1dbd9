"""Variants of a target's quantization recipe judged by parity on their simulation, before any is exported.

Each variant is the target's own recipe for ``--mode separable --quant QUANT`` with some fields replaced
(``NAME=JSON``: ``rtn={}``, ``gptq={"calibration": "gptq", "calibration_samples": 16}``, ``mixed={
"int8_projections": ["k_proj", "v_proj", "lm_head"]}``). It is simulated in torch by
`memlora.runtime.parity.reference.DecoderReference` (the decoder reference parity builds for an exported
target: stored weights exact, activations quantized as the kernel does) and passed to `run_parity` as an extra
target, so the numbers are parity's own top-1 agreement, greedy metrics and answer F1 against the fp32
reference, on the golden set and scripted conversation of `BUNDLE` (any bundle of the same model and adapters:
it supplies the tokenizer, constraints and golden settings; its own targets are not run). A simulation is what
the export packs (tests/test_calibrate.py, tests/test_recipe.py), not a measured artifact: the docs say which
figures are which.

    python scripts/recipe_sim.py BUNDLE OUT.json --target executorch --variant rtn={} --variant ... [--quick]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer


def agreement_length(prompts: list[dict]) -> float:
    """Mean over golden prompts of the greedy steps before the first top-1 disagreement."""
    return sum(p["steps"] if p["first_divergence"] is None else p["first_divergence"] for p in prompts) / len(prompts)


def main(bundle: Path, out: Path,
         target: Annotated[str, typer.Option(help="the target whose recipe the variants change")] = "executorch",
         quant: Annotated[str, typer.Option(help="the --quant whose recipe the variants start from")] = "int4",
         variant: Annotated[list[str], typer.Option(help="NAME=JSON: recipe fields to replace (repeatable)")] = ["rtn={}"],
         block_size: Annotated[int, typer.Option(help="int4 block size")] = 32,
         quick: Annotated[bool, typer.Option(help="parity's smaller golden set and shorter conversation")] = False) -> None:
    from memlora.export.bundle import load_bundle
    from memlora.export.decoder import DecoderConfig
    from memlora.export.lora import load_adapters
    from memlora.export.target import TargetRequest, load
    from memlora.paths import default_model_dir
    from memlora.recipe import QuantRecipe
    from memlora.runtime.parity.cache import default_root
    from memlora.runtime.parity.reference import DecoderReference
    from memlora.runtime.parity.run import run_parity
    from memlora.runtime.parity.targets import Target
    from memlora.session import default_adapters

    model_dir, adapters_dir = default_model_dir(), default_adapters()
    context = load_bundle(bundle).manifest["model"]["max_context"]
    adapters = load_adapters(adapters_dir, DecoderConfig.from_hf(model_dir, context))
    own = load(target).recipe(TargetRequest(model_dir, adapters, "separable", quant, block_size, context))
    sims, built = [], {}
    for spec in variant:
        label, _, fields = spec.partition("=")
        changes = json.loads(fields or "{}")
        recipe = QuantRecipe.from_json({**own.to_json(), **changes}, f"--variant {label}")
        began = time.monotonic()
        sims.append(Target(f"{target}-sim-{label}", DecoderReference(model_dir, adapters, recipe, context), recipe))
        built[sims[-1].name] = round(time.monotonic() - began, 1)
    report = run_parity(bundle, model_dir, adapters_dir, target_names=[], extra_targets=sims, cache=default_root(),
                        quick=quick, progress=lambda msg: print(msg, flush=True))
    report["build_seconds"] = built
    out.write_text(json.dumps(report, indent=1))
    print("| simulated variant | top-1 | greedy exact | greedy agreement length | answer F1 | quant KL | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t in report["targets"].items():
        print(f"| {name} | {t['token']['top1_agreement']:.3f} | {t['token']['greedy_exact_rate']:.2f} | "
              f"{agreement_length(t['token']['prompts']):.1f} | {t['task'].get('answer_f1', float('nan')):.2f} | "
              f"{t['gap']['quantization']['kl']:.3g} | {'pass' if t['passed'] else 'FAIL'} |")


if __name__ == "__main__":
    typer.run(main)
