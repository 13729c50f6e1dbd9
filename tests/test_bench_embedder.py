"""`memlora bench`'s embedder rows on the tiny BERT bundles: the PyTorch reference on the bundle's source model
first, then each target's embedder with its size; ExecuTorch (batch 1 only) says so instead of a batch-32
figure. No timing assertions: only that the figures exist and are sane."""

from __future__ import annotations

from memlora.runtime.bench import embedder


def test_embedder_rows_measure_every_target_beside_the_reference(onnx_bundle, et_bundle, tiny_bert):
    rows = embedder.embedder_rows([onnx_bundle, et_bundle], threads=1, repeats=1, log=lambda s: None)
    assert [(r["who"], r["target"]) for r in rows] == [("reference: PyTorch", "torch"), ("memlora", "onnx"),
                                                       ("memlora", "executorch")]
    ref, onnx, et = rows
    assert ref["source"] == str(tiny_bert) and ref["size_mb"] > 0
    for row in rows:
        assert "error" not in row and row["size_mb"] > 0
        s = row["batch1_s"]
        assert 0 < s["min"] <= s["median"] <= s["max"]
    assert onnx["batch32_s"]["median"] > 0 and ref["batch32_s"]["median"] > 0 and "note" not in onnx
    assert et["max_batch"] == 1 and et["batch32_s"] is None and et["note"].startswith("batch 1 only")
    text = embedder.table(rows)
    assert text.count("\n") == len(rows) + 1 and "batch 1 only" in text and f"({onnx_bundle})" in text
