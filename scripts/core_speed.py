"""Decode speed of the on-device core's host runner against the Python loop on the same ExecuTorch bundle: the same
extract prompt (the demo conversation's first window), adapter and output constraint, two rounds side by side.

    .venv/bin/python scripts/core_speed.py BUNDLE      (build/core/memlora-core from scripts/build_core.sh)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from memlora.bundle_tokenizer import BundleTokenizer
from memlora.export.bundle import load_bundle
from memlora.generate import GenerationConfig, generate
from memlora.pipeline import eos_ids
from memlora.prompts import MAX_NEW_TOKENS
from memlora.runtime.registry import open_backend

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "build" / "core" / "memlora-core"


def core_json(*args: str, stdin: str | None = None):
    return json.loads(subprocess.run([str(CORE), *args], input=stdin, capture_output=True, text=True, check=True).stdout)


def main(bundle: Path, rounds: int = 2) -> None:
    lines = (ROOT / "memlora" / "data" / "demo_conversation.jsonl").read_text().splitlines()[:4]
    ids = core_json("prompt", "--bundle", str(bundle), "--op", "extract",
                    stdin=json.dumps({"turns": [json.loads(x) for x in lines]}) + "\n")
    backend, tok_dir = open_backend("executorch", bundle, None, None)
    tokenizer = BundleTokenizer(tok_dir)
    constraint = load_bundle(bundle, verify=False).constraints.for_op("extract")
    calls: list[tuple[int, float]] = []
    forward = backend.forward

    def timed(tokens, start, adapter, all_logits=False):
        t = time.perf_counter()
        out = forward(tokens, start, adapter, all_logits)
        calls.append((len(tokens), time.perf_counter() - t))
        return out

    backend.forward = timed
    print(f"{'':8} {'prefill tok/s':>14} {'decode tok/s':>13}   prompt {len(ids)} tokens, extract adapter, constrained")
    for n in range(1, rounds + 1):
        core = core_json("generate", "--bundle", str(bundle), "--op", "extract", "--prompt-ids", ",".join(map(str, ids)))
        calls.clear()
        g = generate(backend, tokenizer, ids, "extract", GenerationConfig(max_new_tokens=MAX_NEW_TOKENS["extract"]),
                     eos_ids(tokenizer), "extract", None, constraint)
        decode = calls[1:]
        same = "identical" if g.output_ids == core["output_ids"] else "DIFFERENT"
        print(f"round {n}: {len(g.output_ids)} output tokens, {same} ids")
        print(f"  core   {core['prefill_tokens_per_second']:14.0f} {core['decode_tokens_per_second']:13.1f}")
        print(f"  python {calls[0][0] / calls[0][1]:14.0f} {len(decode) / sum(t for _, t in decode):13.1f}"
              "   (forward calls only)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
