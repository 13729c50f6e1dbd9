"""ExecuTorch peer: its own LLM exporter (`export_llm`, XNNPACK, fused SDPA with an in-place KV cache) and a
`.pte` timed through the ExecuTorch Python runtime.

``action: export`` -- turn the HF checkpoint into the Meta-llama layout `export_llm` reads (a key rename
and the q/k RoPE row permutation HF applied when converting from Meta), write the model's params, and run
`export_llm` once per requested quantization mode (``fp32`` or e.g. ``8da4w`` with group 32), with a PEFT
adapter through its LoRA path (``base.lora_config``) for the modes ``adapters`` names. That path renames the
adapter's keys only, so its q/k LoRA B rows get the same RoPE permutation as the base q/k here. Its smollm2
weight converter needs torchtune (broken with this torchao) and its 135M params are not in the wheel, so
both are done here; the model class is the llama one SmolLM2's class derives from unchanged.
``action: measure`` -- greedy prefill/decode of the job's prompt ids on one `.pte`, 2 threads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peer_common import peak_rss_mb, read_job, size_mb, time_greedy, write_rows

LAYER_KEYS = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def unpermute(w, heads: int):
    """Undo HF's rotate-half row order of a q/k projection (back to Meta's interleaved pairs)."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_checkpoint(model_dir: Path, out: Path) -> dict:
    """Write `export_llm`'s checkpoint (.pth) and params (.json) for a HF Llama-family model; returns params."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    sd = load_file(str(model_dir / "model.safetensors"))
    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for key, value in sd.items():
        if not key.startswith("model.layers."):
            continue
        _, _, i, *rest = key.split(".")
        module, leaf = ".".join(rest[:-1]), rest[-1]
        if module == "self_attn.q_proj":
            value = unpermute(value, heads)
        elif module == "self_attn.k_proj":
            value = unpermute(value, kv_heads)
        meta[f"layers.{i}.{LAYER_KEYS[module]}.{leaf}"] = value.float().contiguous()
    torch.save(meta, out / "checkpoint.pth")
    params = {"dim": cfg["hidden_size"], "hidden_dim": cfg["intermediate_size"], "n_heads": heads,
              "n_kv_heads": kv_heads, "n_layers": cfg["num_hidden_layers"], "norm_eps": cfg["rms_norm_eps"],
              "rope_theta": rope, "use_scaled_rope": False, "vocab_size": cfg["vocab_size"]}
    (out / "params.json").write_text(json.dumps(params))
    return params


def meta_adapter(adapter_dir: Path, model_dir: Path, out: Path) -> list[str]:
    """The PEFT adapter with its q/k LoRA B rows in the base's permuted order, as `export_llm`'s
    ``lora_config`` lines (the adapter_config.json it reads rank, alpha and targets from)."""
    import shutil

    from safetensors.torch import load_file, save_file

    cfg = json.loads((model_dir / "config.json").read_text())
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    for key, value in sd.items():
        module = key.split(".")[-3]
        if module in heads and ".lora_B." in key:
            sd[key] = unpermute(value, heads[module]).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "adapter_model.safetensors"))
    shutil.copy(adapter_dir / "adapter_config.json", out / "adapter_config.json")
    return ["  lora_config:", f"    adapter_checkpoint: {out / 'adapter_model.safetensors'}",
            f"    adapter_config: {out / 'adapter_config.json'}"]


def export(job: dict) -> list[dict]:
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    meta_checkpoint(Path(job["model_dir"]), out)
    adapters = job.get("adapters", {})
    rows = []
    for name, qmode in job["modes"].items():
        lines = ["base:", "  model_class: llama3", f"  checkpoint: {out / 'checkpoint.pth'}",
                 f"  params: {out / 'params.json'}",
                 *(meta_adapter(Path(adapters[name]), Path(job["model_dir"]), out / f"{name}.adapter")
                   if name in adapters else []),
                 "model:", "  use_kv_cache: true",
                 "  use_sdpa_with_kv_cache: true", "  enable_dynamic_shape: true", "  dtype_override: fp32",
                 "export:", f"  max_seq_length: {job['max_seq_length']}",
                 f"  max_context_length: {job['max_context_length']}", f"  output_dir: {out}",
                 f"  output_name: {out / f'{name}.pte'}",  # a bare name lands in the working directory
                 "backend:", "  xnnpack:", "    enabled: true", "    extended_ops: true"]
        if qmode:
            lines += ["quantization:", f"  qmode: {qmode}", f"  group_size: {job['group_size']}"]
        config = out / f"{name}.yaml"
        config.write_text("\n".join(lines) + "\n")
        # not cwd=out: its model factory drops the `executorch.` package prefix when the working
        # directory's name ends in "executorch" (as ours, peers/executorch, does)
        result = subprocess.run([sys.executable, "-m", "executorch.extension.llm.export.export_llm",
                                 "--config", str(config)], capture_output=True, text=True, cwd=out.parent)
        if result.returncode != 0 or not (out / f"{name}.pte").is_file():
            raise SystemExit(f"export_llm {name} failed:\n" + "\n".join(result.stderr.splitlines()[-20:]))
        rows.append({"name": name, "path": str(out / f"{name}.pte")})
    return rows


def measure(job: dict) -> list[dict]:
    import numpy as np
    import torch
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers llama::sdpa_with_kv_cache)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    import executorch.kernels.quantized  # noqa: F401  (quantized embedding / linear kernels)

    torch.set_num_threads(job["threads"])
    portable_lib._unsafe_reset_threadpool(job["threads"])
    method = Runtime.get().load_program(job["path"]).load_method("forward")

    def run(ids, pos):
        out = method.execute([torch.tensor([ids], dtype=torch.long), torch.tensor([pos], dtype=torch.long)])[0]
        return out.reshape(-1, out.shape[-1])[-1].numpy()

    result = time_greedy(job, lambda ids: run(ids, 0), lambda tok, pos: run([tok], pos),
                         lambda x: int(np.argmax(x)))
    result.update(size_mb=size_mb([job["path"]]), rss_mb=peak_rss_mb())
    return [result]


if __name__ == "__main__":
    job, out = read_job()
    write_rows(out, export(job) if job["action"] == "export" else measure(job))
