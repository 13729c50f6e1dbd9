"""optimum-onnx peer: optimum's own ONNX export of the model, run with onnxruntime (fp32 and int8).

``action: export`` -- `optimum.exporters.onnx.main_export` (task text-generation-with-past) on a copy of
the model directory whose config.json also carries ``rope_theta`` (transformers<4.58, which optimum-onnx
pins, ignores the 5.x ``rope_parameters`` field and would silently use 10000) and no tokenizer files
(that transformers cannot load the 5.x tokenizer class; the bench passes token ids); then
`onnxruntime.quantization.quantize_dynamic` for int8.
``action: measure`` -- a raw onnxruntime loop with IO binding (the fastest way to drive this graph:
presents stay OrtValues and are fed back as the next past), 2 threads, no spinning.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from peer_common import peak_rss_mb, read_job, size_mb, time_greedy, write_rows


def export(job: dict) -> list[dict]:
    from optimum.exporters.onnx import main_export
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = Path(job["model_dir"]), Path(job["out_dir"])
    staged = out / "hf"
    staged.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.setdefault("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    (staged / "config.json").write_text(json.dumps(cfg))
    for name in ("model.safetensors", "generation_config.json"):
        if (src / name).is_file() and not (staged / name).exists():
            os.symlink(src / name, staged / name)
    fp32 = out / "fp32"
    main_export(str(staged), output=str(fp32), task="text-generation-with-past", device="cpu",
                do_validation=False)
    int8 = out / "int8"
    int8.mkdir(exist_ok=True)
    quantize_dynamic(str(fp32 / "model.onnx"), str(int8 / "model.onnx"), weight_type=QuantType.QInt8)
    shutil.rmtree(staged)
    return [{"name": "fp32", "path": str(fp32 / "model.onnx")}, {"name": "int8", "path": str(int8 / "model.onnx")}]


def measure(job: dict) -> list[dict]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = job["threads"]
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(job["path"], opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past = [n for n in inputs if n.startswith("past_key_values.")]
    kv_heads, head_dim = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
    state: dict = {}

    def run(ids, start):
        binding = sess.io_binding()
        n = len(ids)
        binding.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, start + n), np.int64))
        if "position_ids" in inputs:
            binding.bind_cpu_input("position_ids", np.arange(start, start + n, dtype=np.int64)[None])
        for name in past:
            value = state.get(name)
            if value is None:
                binding.bind_cpu_input(name, np.zeros((1, kv_heads, 0, head_dim), np.float32))
            else:
                binding.bind_ortvalue_input(name, value)
        for out in sess.get_outputs():
            binding.bind_output(out.name)
        sess.run_with_iobinding(binding)
        outs = dict(zip([o.name for o in sess.get_outputs()], binding.get_outputs()))
        for name in past:
            state[name] = outs[name.replace("past_key_values", "present")]
        return outs["logits"].numpy()[0, -1]

    def prefill(ids):
        state.clear()
        return run(ids, 0)

    files = [job["path"]] + ([job["path"] + "_data"] if os.path.exists(job["path"] + "_data") else [])
    files += [str(p) for p in Path(job["path"]).parent.glob("*.onnx.data")]
    result = time_greedy(job, prefill, lambda tok, pos: run([tok], pos), lambda x: int(np.argmax(x)))
    result.update(size_mb=size_mb(sorted(set(files))), rss_mb=peak_rss_mb())
    return [result]


if __name__ == "__main__":
    job, out = read_job()
    write_rows(out, export(job) if job["action"] == "export" else measure(job))
