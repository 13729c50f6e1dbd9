"""The fp32 reference cache: a run that records, a run that replays and a run without the cache give the
same report (speeds, measured on the target, aside); a corrupt entry is ignored with a note and rebuilt."""

from __future__ import annotations

import json
import time

from memlora.runtime.parity.run import run_parity


def _same(report: dict) -> str:
    """The report without what no two runs share: the targets' timing."""
    report = json.loads(json.dumps(report))
    for t in report["targets"].values():
        del t["speed"]
    return json.dumps(report, sort_keys=True)


def test_cached_reference_gives_the_same_report_and_survives_corruption(onnx_bundle, tiny_model, taught_adapters,
                                                                         tmp_path):
    notes: list[str] = []

    def run(cache):
        t0 = time.perf_counter()
        report = run_parity(onnx_bundle, tiny_model, taught_adapters, quick=True, cache=cache, progress=notes.append)
        return report, time.perf_counter() - t0

    fresh, _ = run(None)
    cold, cold_s = run(tmp_path)
    (entry,) = [p for p in tmp_path.iterdir()]
    assert not entry.name.startswith(".") and (entry / "meta.json").is_file()
    notes.clear()
    warm, warm_s = run(tmp_path)
    assert f"fp32 reference: replayed from {entry}" in notes
    assert "load fp32 reference (transformers+peft)" not in notes
    assert _same(fresh) == _same(cold) == _same(warm) and warm["passed"]
    print(f"tiny model, parity --quick: cold {cold_s:.1f} s, warm {warm_s:.1f} s")

    broken = entry / "3.npy"
    broken.write_bytes(broken.read_bytes()[:-8])
    notes.clear()
    rebuilt, _ = run(tmp_path)
    assert any(n.startswith(f"note: ignoring the corrupt reference cache {entry} (3.npy") for n in notes)
    assert f"fp32 reference: cached in {entry}" in notes and _same(rebuilt) == _same(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name]  # nothing left aside
