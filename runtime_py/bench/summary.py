"""Turn raw measurements into the report: medians with spreads, ratios to the reference and to the peers,
greedy agreement with eager fp32, the bandwidth roofline, and the goals met or missed."""

from __future__ import annotations

import statistics

from pathlib import Path

from memlora.recipe import QuantRecipe

from . import bandwidth
from .measure import BENCH_ADAPTER, BenchConfig

FIGURES = ("decode_tok_s", "prefill_tok_s", "ttft_ms")
PRECISION_CLASS = {"fp32": "fp32", "int8": "int8", "int4": "int4", "bf16": "bf16"}


def first_divergence(tokens: list[int], reference: list[int]) -> int | None:
    """Index of the first greedy token that differs from the reference, None if all agree."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def agreement(tokens: list[int], reference: list[int], against: str) -> dict:
    first = first_divergence(tokens, reference)
    return {"first_divergence": first, "agree_tokens": len(reference) if first is None else first,
            "of": len(reference), "against": against}


def merge_rounds(rounds: list[dict]) -> dict:
    """One row from its measurements in several rounds: per figure the median of the rounds' medians and
    the spread over every run; the rest (tokens, memory, profile) from the first round."""
    if len(rounds) == 1:
        return rounds[0]
    out = dict(rounds[0])
    for key in FIGURES:
        out[key] = {"median": statistics.median(r[key]["median"] for r in rounds),
                    "min": min(r[key]["min"] for r in rounds), "max": max(r[key]["max"] for r in rounds)}
    switches = [r["switch_ms"] for r in rounds if r.get("switch_ms") is not None]
    if switches:
        out["switch_ms"] = statistics.median(switches)
    if all("rss_mb" in r for r in rounds):
        out["rss_mb"] = max(r["rss_mb"] for r in rounds)
    return out


def flatten(measured: dict) -> dict:
    """Medians under the figure's name, the min-max spread under ``<name>_range``."""
    out = {}
    for key in FIGURES:
        out[key] = measured[key]["median"]
        out[f"{key}_range"] = [measured[key]["min"], measured[key]["max"]]
    for key in ("switch_ms", "rss_mb", "memory", "size_mb", "load_s", "per_token"):
        if key in measured:
            out[key] = measured[key]
    return out


def ratios(row: dict, ref: dict) -> dict:
    """Each figure as a multiple of the reference's (higher is better for speeds, lower for the rest)."""
    return {key: row[key] / ref[key] for key in (*FIGURES, "rss_mb") if row.get(key) and ref.get(key)}


def bytes_per_token(art: dict, adapter: str, kv_bytes: float, model_cfg: dict) -> tuple[float, str]:
    """Bytes one decode step of our artifact reads, and how that was counted."""
    entry, root = art["entry"], Path(art["bundle"])
    if art["target"] == "onnx":
        if entry["mode"] == "separable":
            weights, _ = bandwidth.onnx_weight_bytes(root / entry["graphs"]["base"])
            weights += (root / entry["adapter_files"][adapter]).stat().st_size
        else:
            weights, _ = bandwidth.onnx_weight_bytes(root / entry["graphs"][adapter])
        return weights + kv_bytes, "graph initializers (embedding: one row) + adapter + KV cache"
    if art["target"] == "gguf":  # a tied token_embd is the output head too: read whole every step
        read = sum((root / f).stat().st_size for f in (entry["graphs"]["base"], entry["adapter_files"][adapter]))
        return read + kv_bytes, "model file (a tied token_embd is the head) + LoRA file + KV cache"
    # program files (ExecuTorch, Core ML): the program this adapter runs, less what a step does not read --
    # all but one row of the token embedding and, where one program holds every adapter, the others' LoRA
    graph = entry["graphs"].get(adapter) or next(iter(entry["graphs"].values()))
    data = set(entry.get("data_files", {}).values())
    files = [f for f in entry["files"] if f == graph or f.startswith(graph + "/") or f in data]
    recipe = QuantRecipe.from_json(entry["quantization"], f"{root}: {art['target']}")
    embed = model_cfg["vocab_size"] * model_cfg["hidden_size"] * recipe.embedding_bits // 8
    unread = embed - embed // model_cfg["vocab_size"]
    if adapter not in entry["graphs"]:
        from memlora.export.bundle import load_bundle

        adapters = load_bundle(root, verify=False).manifest["adapters"]
        unread += sum(lora_bytes(a, model_cfg) for a in adapters if a["name"] != adapter)
    read = sum((root / f).stat().st_size for f in files) - unread
    return read + kv_bytes, "program for this adapter (embedding: one row; other adapters' LoRA not read) + KV cache"


def lora_bytes(adapter: dict, model_cfg: dict) -> int:
    """fp32 bytes of one adapter's LoRA A and B over every layer, from its rank and target modules."""
    h, inter = model_cfg["hidden_size"], model_cfg["intermediate_size"]
    heads = model_cfg["num_attention_heads"]
    hd = model_cfg.get("head_dim") or h // heads
    q, kv = heads * hd, model_cfg.get("num_key_value_heads", heads) * hd
    dims = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h,
            "gate_proj": h + inter, "up_proj": h + inter, "down_proj": inter + h}
    return 4 * model_cfg["num_hidden_layers"] * adapter["rank"] * sum(dims[t] for t in adapter["targets"])


def peer_bytes(row: dict, kv_bytes: float) -> tuple[float, str]:
    path = Path(row["path"])
    if path.suffix == ".onnx":
        weights, _ = bandwidth.onnx_weight_bytes(path)
        return weights + kv_bytes, "graph initializers (embedding: one row) + KV cache"
    if row.get("lora"):
        return path.stat().st_size + Path(row["lora"]).stat().st_size + kv_bytes, "file size + LoRA file + KV cache"
    return path.stat().st_size + kv_bytes, "file size + KV cache"


def assemble(machine: dict, bw: float, config: BenchConfig, prompt: list[int], model_cfg: dict,
             reference: dict, ours: list[dict], peer_rows: list[dict], through_genai: list[dict] = ()) -> dict:
    """The report. `through_genai`: our ONNX bundles measured through onnxruntime-genai's own loop (rows like
    ours, under ``genai``, each with ``vs_ours``: its speeds over our backend's on the same bundle); the goals
    judge our own backends only."""
    kv = bandwidth.kv_bytes_per_token(model_cfg, len(prompt) + config.decode_tokens / 2)
    ref32, ref16 = flatten(reference["float32"]), flatten(reference["bfloat16"])
    ref_tokens, base_tokens = reference["float32"]["tokens"], reference["float32"]["extra_tokens"]["None"]
    ref32["agreement"] = agreement(ref_tokens, ref_tokens, "itself")
    ref16["agreement"] = agreement(reference["bfloat16"]["tokens"], ref_tokens, "eager fp32, same adapter")

    def with_roofline(row: dict, nbytes: float, how: str) -> dict:
        row["bytes_per_token"], row["bytes_counted"] = nbytes, how
        row["roofline_tok_s"] = bandwidth.roofline(bw, nbytes)
        row["roofline_frac"] = row["decode_tok_s"] / row["roofline_tok_s"]
        return row

    def bundle_row(art: dict) -> dict:
        base = {k: art[k] for k in ("target", "mode", "precision", "bundle", "size_mb")}
        if "error" in art:
            return {**base, "error": art["error"]}
        row = {**base, **flatten(art), "size_mb": art["size_mb"], "adapter": BENCH_ADAPTER}
        with_roofline(row, *bytes_per_token(art, BENCH_ADAPTER, kv, model_cfg))
        row["agreement"] = agreement(art["tokens"], ref_tokens, "eager fp32, same adapter")
        row["vs_reference"] = ratios(row, ref32)
        row["vs_reference_bf16"] = ratios(row, ref16)
        return row

    results = [bundle_row(art) for art in ours]
    genai_out = []
    for art in through_genai:
        row = bundle_row(art)
        own = [(a, r) for a, r in zip(ours, results) if a["bundle"] == art["bundle"] and a["target"] == "onnx"]
        if "error" not in row and own and "error" not in own[0][1]:
            (own_art, own_row), = own
            row["vs_ours"] = {"decode": row["decode_tok_s"] / own_row["decode_tok_s"],
                              "prefill": row["prefill_tok_s"] / own_row["prefill_tok_s"],
                              **agreement(art["tokens"], own_art["tokens"], "our backend, same bundle")}
        genai_out.append(row)

    peer_out = []
    for p in peer_rows:
        if "error" in p:
            peer_out.append(p)
            continue
        row = {"name": p["name"], "precision": p["precision"], "precision_class": p["precision_class"],
               **flatten(p), "path": p["path"], "adapter": p.get("adapter")}
        with_roofline(row, *peer_bytes(p, kv))
        row["agreement"] = (agreement(p["tokens"], ref_tokens, "eager fp32, same adapter") if row["adapter"] else
                            agreement(p["tokens"], base_tokens, "eager fp32, no adapter"))
        row["vs_reference"] = ratios(row, ref32)
        peer_out.append(row)

    for row in results:
        if "error" in row:
            continue
        same = [p for p in peer_out if "error" not in p and p["precision_class"] == PRECISION_CLASS.get(row["precision"])]
        row["vs_peers"] = {peer_label(p): {"decode": row["decode_tok_s"] / p["decode_tok_s"],
                                                           "prefill": row["prefill_tok_s"] / p["prefill_tok_s"]}
                           for p in same}
    return {
        "machine": machine,
        "bandwidth_gbs": bw,
        "settings": {**config.__dict__, "prompt_ids_sha": _ids_digest(prompt), "adapter": BENCH_ADAPTER},
        "reference": {**ref32, "precision": "fp32", "bf16": ref16},
        "results": results,
        "genai": genai_out,
        "peers": peer_out,
        "goals": goals(results, peer_out),
    }


def _ids_digest(ids: list[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def peer_label(p: dict) -> str:
    """How reports name a peer row: name, precision, and the adapter it runs with, if any."""
    return f"{p['name']} {p['precision']}" + (f" + {p['adapter']} LoRA" if p.get("adapter") else "")


def goals(results: list[dict], peer_rows: list[dict]) -> list[dict]:
    """The issue's goals, each with the measured value, the bar and whether it was met. Ours run with an
    adapter active, so the decode and prefill goals compare with the peers that run the same adapter where
    any did (llama.cpp applies LoRA at run time), else with every peer."""
    ok = [r for r in results if "error" not in r]
    sep = [r for r in ok if r["mode"] == "separable"]
    every = [p for p in peer_rows if "error" not in p]
    ps = [p for p in every if p.get("adapter")] or every
    out = []

    def goal(name: str, value, bar: str, met: bool | None, detail: str = "") -> None:
        out.append({"goal": name, "value": value, "bar": bar, "met": met, "detail": detail})

    if sep and ps:
        best = max(sep, key=lambda r: r["decode_tok_s"])
        top = max(ps, key=lambda p: p["decode_tok_s"])
        agree_ok = best["agreement"]["agree_tokens"] >= top["agreement"]["agree_tokens"]
        goal("best separable decode / best peer decode", best["decode_tok_s"] / top["decode_tok_s"], ">= 1.0 at >= agreement",
             best["decode_tok_s"] >= top["decode_tok_s"] and agree_ok,
             f"ours {best['target']} {best['precision']} {best['decode_tok_s']:.1f} tok/s agree "
             f"{best['agreement']['agree_tokens']}; {peer_label(top)} {top['decode_tok_s']:.1f} agree "
             f"{top['agreement']['agree_tokens']}")
        # the goal reads "the best peer's prefill": the prefill of `top`, the peer the decode goal names. The
        # fastest prefill of any peer is reported beside it, with that peer's agreement.
        fast = max(sep, key=lambda r: r["prefill_tok_s"])
        quick = max(ps, key=lambda p: p["prefill_tok_s"])
        goal("best separable prefill / best peer's prefill", fast["prefill_tok_s"] / top["prefill_tok_s"], ">= 1.0",
             fast["prefill_tok_s"] >= top["prefill_tok_s"],
             f"ours {fast['target']} {fast['precision']} {fast['prefill_tok_s']:.0f} tok/s; {peer_label(top)} "
             f"{top['prefill_tok_s']:.0f}; fastest peer prefill: {peer_label(quick)} "
             f"{quick['prefill_tok_s']:.0f} (agree {quick['agreement']['agree_tokens']}), "
             f"ratio {fast['prefill_tok_s'] / quick['prefill_tok_s']:.2f}")
    for r in sep:
        if r["target"] != "onnx":
            continue
        for p in every:
            if p["name"].startswith("optimum-onnx") and p["precision_class"] == r["precision"]:
                ratio = r["decode_tok_s"] / p["decode_tok_s"]
                goal(f"onnx {r['precision']} decode / optimum-onnx {p['precision']}", ratio, ">= 1.5", ratio >= 1.5)
    if sep:
        best = max(sep, key=lambda r: r["roofline_frac"])
        goal("decode / bandwidth roofline (best)", best["roofline_frac"], ">= 0.5", best["roofline_frac"] >= 0.5,
             f"{best['target']} {best['precision']}")
        switch = [r["switch_ms"] for r in sep if r.get("switch_ms") is not None]
        if switch:
            goal("adapter switch (worst separable)", max(switch), "<= 1 ms", max(switch) <= 1.0)
    for r in sep:
        merged = [m for m in ok if m["mode"] == "merged" and m["target"] == r["target"] and m["precision"] == r["precision"]]
        try:
            one, what = (one_merged_mb(merged[0]), "one merged model") if merged else (base_model_mb(r), "its base model alone")
        except KeyError:  # a target without per-model graphs in its manifest entry
            continue
        goal(f"{r['target']} {r['precision']} separable bundle / one merged model", r["size_mb"] / one, "<= 1.15",
             r["size_mb"] / one <= 1.15, f"{r['size_mb']:.1f} MB vs {one:.1f} MB ({what}"
             + ("" if merged else ": a lower bound of a merged model's size, so the ratio is an upper bound") + ")")
    return out


def one_merged_mb(row: dict) -> float:
    """Size of one adapter's model in a merged bundle (its graph and weights), in MB."""
    return _graph_mb(row, row["adapter"])


def base_model_mb(row: dict) -> float:
    """Size of the base model alone in a bundle (graph and weights, no adapter), in MB."""
    return _graph_mb(row, "base")


def _graph_mb(row: dict, name: str) -> float:
    from memlora.export.bundle import load_bundle

    root = Path(row["bundle"])
    entry = load_bundle(root, verify=False).target(row["target"])
    graph = entry["graphs"][name]
    files = [f for f in entry["files"] if f == graph or f.startswith(graph + ".")]
    return sum((root / f).stat().st_size for f in files) / 1e6
