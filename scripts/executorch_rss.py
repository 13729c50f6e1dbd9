"""Resident memory of an ExecuTorch bundle with one adapter used and with every adapter used, and decode speed
with `extract` active: the figures of docs/executorch.md. Usage: python scripts/executorch_rss.py BUNDLE"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from memlora.runtime.bench.measure import adapter_rss, current_rss_mb
from memlora.runtime.executorch_backend import from_bundle

PREFILL, STEPS = 128, 64


def main(bundle: Path) -> dict:
    t = time.perf_counter()
    backend = from_bundle(bundle, threads=2)
    load_s = time.perf_counter() - t
    after_load = current_rss_mb()
    memory = adapter_rss(backend, "extract", 1)
    backend.forward(list(range(1, PREFILL + 1)), 0, "extract")
    t = time.perf_counter()
    for i in range(STEPS):
        backend.forward([5], PREFILL + i, "extract")
    decode = STEPS / (time.perf_counter() - t)
    return {"load_s": round(load_s, 1), "rss_after_load_mb": round(after_load),
            **{k: round(v) for k, v in memory.items()}, "decode_tok_s_extract": round(decode, 1)}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
