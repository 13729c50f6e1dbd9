"""llama.cpp peer (llama-cpp-python built from its sdist): quantize GGUFs, and time one GGUF.

``action: quantize`` -- write the requested llama.cpp file types from a source GGUF with
``llama_model_quantize`` (requantizing is allowed: the source is the Q4_1 GGUF the model ships as, whose
dequantized weights are exactly the fp32 checkpoint memlora uses, so every GGUF is the same model).
``action: measure`` -- greedy prefill/decode of the job's prompt ids on one GGUF, 2 threads, with the job's
GGUF LoRA file applied at run time when it names one (``lora``; llama.cpp scales it by the alpha / r it stores).
"""

from __future__ import annotations

import ctypes

import numpy as np

import llama_cpp
from peer_common import peak_rss_mb, read_job, size_mb, time_greedy, write_rows

FTYPES = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
          "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "Q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1}


def quantize(job: dict) -> list[dict]:
    rows = []
    for name, path in job["outputs"].items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[name]
        params.allow_requantize = True
        params.nthread = job["threads"]
        rc = llama_cpp.llama_model_quantize(job["source"].encode(), path.encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"llama_model_quantize to {name} failed ({rc})")
        rows.append({"name": name, "path": path})
    return rows


def measure(job: dict) -> list[dict]:
    llm = llama_cpp.Llama(job["path"], n_ctx=len(job["prompt"]) + job["decode_tokens"] + 16, n_batch=512,
                          n_ubatch=512, n_threads=job["threads"], n_threads_batch=job["threads"],
                          logits_all=False, verbose=False, lora_path=job.get("lora"))
    vocab = llm.n_vocab()

    def logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    def prefill(ids):
        llm.reset()
        llm.eval(ids)
        return logits()

    def step(token, pos):
        llm.eval([token])
        return logits()

    result = time_greedy(job, prefill, step, lambda x: int(np.argmax(x)))
    result.update(size_mb=size_mb([job["path"]]), rss_mb=peak_rss_mb())
    return [result]


if __name__ == "__main__":
    job, out = read_job()
    write_rows(out, quantize(job) if job["action"] == "quantize" else measure(job))
