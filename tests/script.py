"""A scripted two-exchange conversation and the outputs the taught tiny adapters must produce for it."""

from __future__ import annotations

import json

from memlora.prompts import Memory, Turn, answer_messages, extract_messages, render, update_messages

DATE = "8 May 2023"
EXCHANGES = [
    ("chat:s1:D1:1", [Turn("Caroline", "I went to a support group yesterday.", DATE, "D1:1"),
                      Turn("Melanie", "That sounds great!", DATE, "D1:2")]),
    ("chat:s1:D1:3", [Turn("Caroline", "I also started painting sunsets.", DATE, "D1:3"),
                      Turn("Melanie", "Lovely.", DATE, "D1:4")]),
]
FACT1 = "Caroline went to a support group"
FACT2 = "Caroline paints sunsets"
MERGED = "Caroline went to a support group and paints sunsets"
QUESTION = "What does Caroline paint?"
ANSWER = "Sunsets"


def _j(obj) -> str:
    return json.dumps(obj, separators=(", ", ": "))


def lessons(tok) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Prompt ids -> target ids per adapter, built with the pipeline's own prompt code."""
    end = [tok.convert_tokens_to_ids("<|im_end|>")]
    enc = lambda s: tok.encode(s, add_special_tokens=False) + end  # noqa: E731
    m0 = Memory("m0", FACT1, DATE)
    return {
        "extract": [
            (render(tok, extract_messages(EXCHANGES[0][1])), enc(_j({"facts": [FACT1]}))),
            (render(tok, extract_messages(EXCHANGES[1][1])), enc(_j({"facts": [FACT2]}))),
        ],
        "mem_update": [
            (render(tok, update_messages([FACT1], [])), enc(_j({"memory": [{"event": "ADD", "text": FACT1}]}))),
            (render(tok, update_messages([FACT2], [m0])),
             enc(_j({"memory": [{"event": "UPDATE", "id": "0", "text": MERGED}]}))),
        ],
        "answer": [(render(tok, answer_messages(QUESTION, [Memory("m0", MERGED, DATE)])), enc(ANSWER))],
    }
