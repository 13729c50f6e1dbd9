"""The llama.cpp peer with our adapter active: llama.cpp's own converter turns the shipped PEFT adapter into a
GGUF LoRA file, and llama.cpp applying it at run time decodes what transformers+peft decodes.

Marked `real` (the default model from `memlora setup`); the first run builds the peer venvs (llama-cpp-python
from its sdist, about 3 min on 2 cores, and the converter's own pins, under a minute)."""

from __future__ import annotations

import numpy as np
import pytest

DECODE = 24


@pytest.mark.real
def test_llama_cpp_with_the_converted_lora_decodes_as_peft():
    from memlora.paths import default_model_dir
    from memlora.runtime.bench import peers
    from memlora.runtime.torch_backend import TorchBackend
    from memlora.session import default_adapters, load_tokenizer

    model_dir, adapters_dir = default_model_dir(), default_adapters()
    tokenizer = load_tokenizer(model_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Ana: my dog Max is a beagle. Ben: I moved to Porto for a new job."}],
        add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    reference = TorchBackend(model_dir, adapters_dir, mode="separable")
    want = [int(np.argmax(reference.forward(list(prompt), 0, "extract")[-1]))]
    while len(want) < DECODE:
        want.append(int(np.argmax(reference.forward([want[-1]], len(prompt) + len(want) - 1, "extract")[-1])))

    lora = peers.gguf_lora(model_dir, adapters_dir / "extract")
    assert lora.name == "extract.lora.f32.gguf" and lora.stat().st_size > 1_000_000
    f32 = next(a for a in peers.prepare("llama-cpp", model_dir, adapters_dir / "extract", 512, 2)
               if a.precision == "F32" and a.lora == lora)
    settings = {"prompt": list(prompt), "decode_tokens": DECODE, "warmup": 0, "repeats": 1, "threads": 2}
    with_lora = peers.measure_peer(f32, settings)
    base = peers.measure_peer(peers.PeerArtifact(f32.peer, "F32", "fp32", f32.path, f32.env), settings)
    assert with_lora["tokens"] == want
    assert base["tokens"] != want  # the adapter is really applied: the base model writes something else
