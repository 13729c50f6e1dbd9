"""Localisation: name the first decoder layer whose hidden state diverges between a target and the reference.

Both sides report a list of hidden states for one prefill -- the embeddings, then each layer's output
(``export.decoder``'s ``return_hidden`` convention). The reference is the decoder with the target's
quantization simulated, so quantization noise is not mistaken for a broken layer. Relative error is
``||target - reference|| / ||reference||`` per state; the first state above the precision's tolerance is
where the target went wrong (everything upstream of it computed the same numbers).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from memlora.errors import MemloraError

HiddenProbe = Callable[[list[int], "str | None"], list[np.ndarray]]
"""A target's debug view: ``probe(tokens, adapter)`` -> hidden states of a prefill from position 0."""


def state_name(index: int) -> str:
    return "embed_tokens" if index == 0 else f"layers.{index - 1}"


def relative_errors(reference: list[np.ndarray], target: list[np.ndarray]) -> list[float]:
    if len(reference) != len(target):
        raise ValueError(f"reference has {len(reference)} hidden states, target {len(target)}")
    out = []
    for r, t in zip(reference, target):
        r = np.asarray(r, np.float64).reshape(-1)
        t = np.asarray(t, np.float64).reshape(r.shape)
        out.append(float(np.linalg.norm(t - r) / max(np.linalg.norm(r), 1e-30)))
    return out


def localise(reference_probe: HiddenProbe, target_probe: HiddenProbe | None, tokens: list[int],
             adapter: str | None, tolerance: float) -> dict:
    """The first diverging state for a prefill of `tokens`, with every state's relative error."""
    if target_probe is None:
        return {"layer": None, "reason": "this target has no hidden-state probe"}
    try:
        target = target_probe(tokens, adapter)
    except MemloraError as e:  # e.g. a program whose structure hides the layer outputs: a reason, not a crash
        return {"layer": None, "reason": f"the hidden-state probe failed: {e}"}
    reference = reference_probe(tokens, adapter)
    if len(target) != len(reference):  # e.g. a delegate spanning two layers shows only one of their outputs
        return {"layer": None, "reason": f"the hidden-state probe read {len(target)} states, the reference has "
                                         f"{len(reference)} (embeddings and each layer's output)"}
    errors = relative_errors(reference, target)
    first = next((i for i, e in enumerate(errors) if e > tolerance), None)
    return {
        "layer": None if first is None else state_name(first),
        "index": first,
        "tolerance": tolerance,
        "adapter": adapter,
        "tokens": len(tokens),
        "relative_errors": {state_name(i): e for i, e in enumerate(errors)},
        **({} if first is not None else {"reason": "no hidden state exceeds the tolerance (the divergence is "
                                                   "after the last layer or only on the decode path)"}),
    }
