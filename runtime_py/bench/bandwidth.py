"""The physical limit of decode: memory read bandwidth, and the bytes an artifact reads per decoded token.

Decoding one token of a small model reads every weight matrix once (plus one embedding row and the KV
cache so far) and does little arithmetic on it, so tokens/s <= bandwidth / bytes per token. That bound
is the roofline the bench reports each decode speed against.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ONNX_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 16: 2}
"""Bytes per element of ONNX TensorProto data types (float, uint8, int8, uint16, int16, int32, int64, bool,
float16, double, bfloat16)."""


def read_bandwidth_gbs(threads: int = 2, mib: int = 512, repeats: int = 7) -> float:
    """Best observed read bandwidth (GB/s) reducing a buffer far larger than the caches, one slice per thread.

    The best of several runs: the limit is what the memory system can deliver, not what a busy moment gave."""
    data = np.ones(mib * (1 << 20) // 4, np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))  # numpy releases the GIL inside the reduction
            best = max(best, data.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def kv_bytes_per_token(model_config: dict, context: float, dtype_bytes: int = 4) -> float:
    """Bytes of KV cache one decode step reads at a given context length (all layers, keys and values)."""
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads", heads)
    head_dim = model_config.get("head_dim") or model_config["hidden_size"] // heads
    return 2 * model_config["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes * context


def onnx_weight_bytes(graph_path: Path) -> tuple[int, int]:
    """(bytes read per token, bytes of gather-only tables) of an ONNX graph's initializers.

    A table used only by Gather (the token embedding) contributes one row per token, not its whole size;
    everything else (MatMul/MatMulNBits weights, scales, norms, the lm_head) is read in full."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    read, gather_only = 0, 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims, dtype=np.int64)) * ONNX_BYTES.get(init.data_type, 4)
        if users.get(init.name) == {"Gather"} and len(init.dims) == 2:
            gather_only += n
            read += n // init.dims[0]
        else:
            read += n
    return read, gather_only


def roofline(bandwidth_gbs: float, bytes_per_token: float) -> float:
    """Upper bound on decode tokens/s when every token reads `bytes_per_token` at `bandwidth_gbs`."""
    return bandwidth_gbs * 1e9 / bytes_per_token


def model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
