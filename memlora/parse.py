"""Parse model outputs into typed results, or reject them whole.

A malformed output raises `MalformedOutput`; the pipeline records it and applies nothing from it, so a
half-valid answer can never leave the store half-updated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import MemloraError

EVENTS = ("ADD", "UPDATE", "DELETE", "NONE")


class MalformedOutput(MemloraError, ValueError):
    """The model's output does not have the shape the operation requires."""


@dataclass(frozen=True)
class MemoryEvent:
    """One Mem0 event. `id` is the prompt's temporary id for UPDATE/DELETE/NONE, None for ADD."""

    event: str
    id: str | None
    text: str
    old_memory: str = ""


def _first_json_object(text: str) -> dict:
    start = text.find("{")
    if start < 0:
        raise MalformedOutput("no JSON object in output")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise MalformedOutput(f"invalid JSON: {e.msg} at char {e.pos}") from e
    except RecursionError as e:
        raise MalformedOutput("JSON nested too deeply") from e
    if not isinstance(obj, dict):
        raise MalformedOutput("output JSON is not an object")
    return obj


def parse_facts(text: str) -> list[str]:
    """`{"facts": ["...", ...]}` -> the non-empty, de-duplicated facts in order."""
    facts = _first_json_object(text).get("facts")
    if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
        raise MalformedOutput('"facts" must be a list of strings')
    return list(dict.fromkeys(f.strip() for f in facts if f.strip()))


def parse_update(text: str, known_ids: set[str]) -> list[MemoryEvent]:
    """Mem0's `{"memory": [{"id", "text", "event", "old_memory"}]}` -> validated events.

    Every entry must name a known id for UPDATE/DELETE/NONE and carry text for ADD/UPDATE; one bad
    entry rejects the whole output. Two events on the same existing id are contradictory and rejected.
    """
    entries = _first_json_object(text).get("memory")
    if not isinstance(entries, list):
        raise MalformedOutput('"memory" must be a list')
    events: list[MemoryEvent] = []
    touched: set[str] = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise MalformedOutput(f"memory[{i}] is not an object")
        event = str(e.get("event", "")).upper()
        if event not in EVENTS:
            raise MalformedOutput(f"memory[{i}].event {e.get('event')!r} is not one of {', '.join(EVENTS)}")
        mem_text = e.get("text", "")
        if not isinstance(mem_text, str):
            raise MalformedOutput(f"memory[{i}].text is not a string")
        mem_text = mem_text.strip()
        if event in ("ADD", "UPDATE") and not mem_text:
            raise MalformedOutput(f"memory[{i}] ({event}) has no text")
        mem_id = None
        if event != "ADD":
            mem_id = str(e.get("id", ""))
            if mem_id not in known_ids:
                raise MalformedOutput(f"memory[{i}] ({event}) refers to unknown id {mem_id!r}")
            if mem_id in touched and event != "NONE":
                raise MalformedOutput(f"memory[{i}] changes id {mem_id!r} twice")
            touched.add(mem_id)
        old = e.get("old_memory", "")
        events.append(MemoryEvent(event, mem_id, mem_text, old if isinstance(old, str) else ""))
    return events


def parse_answer(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""
