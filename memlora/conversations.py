"""Reading conversations to ingest: LoCoMo files (flat or the official nested layout) and JSONL turns.

A conversation becomes sessions of `Turn`s; ingestion cuts each session into exchanges (windows of turns),
each with a stable key so an interrupted ingest resumes where it stopped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MemloraError
from .prompts import Turn

_DATE = re.compile(r"(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})")


@dataclass
class Session:
    number: int
    date: str
    turns: list[Turn]
    observations: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@dataclass
class Conversation:
    id: str
    speakers: tuple[str, str]
    sessions: list[Session]
    qa: list[dict]


def display_date(raw: str) -> str:
    """'1:56 pm on 8 May, 2023' -> '8 May 2023' (the day is what answers need; other text is kept)."""
    m = _DATE.search(raw or "")
    return f"{m.group(1)} {m.group(2)} {m.group(3)}" if m else (raw or "").strip()


def load_locomo(path: Path) -> Conversation:
    """Load one LoCoMo conversation: the flat per-file layout or an entry of the official `locomo10.json`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MemloraError(f"{path}: cannot read LoCoMo conversation ({e})") from e
    if isinstance(data, list):
        if len(data) != 1:
            raise MemloraError(f"{path}: holds {len(data)} conversations; pass a file with one")
        data = data[0]
    if not isinstance(data, dict):
        raise MemloraError(f"{path}: not a LoCoMo conversation (top level is {type(data).__name__})")
    conv = data.get("conversation", data)
    obs = data.get("observation", data)
    try:
        speakers = (conv["speaker_a"], conv["speaker_b"])
    except KeyError as e:
        raise MemloraError(f"{path}: not a LoCoMo conversation (missing {e.args[0]!r})") from e
    numbers = sorted(int(k.split("_")[1]) for k in conv if re.fullmatch(r"session_\d+", k))
    sessions = []
    for n in numbers:
        date = display_date(conv.get(f"session_{n}_date_time", ""))
        turns = [
            Turn(t["speaker"], _turn_text(t), date, t.get("dia_id", f"D{n}:{i + 1}"))
            for i, t in enumerate(conv[f"session_{n}"] or [])
        ]
        raw_obs = obs.get(f"session_{n}_observation") or {}
        observations = {sp: [(f[0], f[1]) for f in facts if len(f) >= 2] for sp, facts in raw_obs.items()}
        if turns:
            sessions.append(Session(n, date, turns, observations))
    return Conversation(data.get("sample_id", path.stem), speakers, sessions, data.get("qa", []))


def _turn_text(t: dict) -> str:
    text = t.get("text", "")
    if t.get("blip_caption"):
        text += f" [shares a photo: {t['blip_caption']}]"
    return text


def load_jsonl_turns(path: Path) -> Conversation:
    """A JSONL of `{"speaker", "text", "date"}` turns; a change of date starts a new session."""
    path = Path(path)
    sessions: list[Session] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise MemloraError(f"{path}: cannot read ({e.strerror})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            turn = Turn(str(obj["speaker"]), str(obj["text"]), display_date(str(obj.get("date", ""))), f"L{n}")
        except (ValueError, KeyError, TypeError) as e:
            raise MemloraError(f"{path}:{n}: expected a JSON object with speaker, text and date ({e})") from e
        if not sessions or sessions[-1].date != turn.date:
            sessions.append(Session(len(sessions) + 1, turn.date, []))
        sessions[-1].turns.append(turn)
    if not sessions:
        raise MemloraError(f"{path}: no turns found")
    speakers = tuple(dict.fromkeys(t.speaker for s in sessions for t in s.turns))[:2]
    return Conversation(path.stem, (speakers + ("", ""))[:2], sessions, [])


def load_conversation(path: Path) -> Conversation:
    return load_jsonl_turns(path) if Path(path).suffix == ".jsonl" else load_locomo(path)


def parse_range(spec: str | None, available: list[int]) -> list[int]:
    """'1-3,5' -> [1, 2, 3, 5], restricted to the sessions the conversation has."""
    if not spec:
        return available
    chosen: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            chosen.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as e:
        raise MemloraError(f"--sessions {spec!r}: expected numbers and ranges such as 1-3,5") from e
    missing = sorted(chosen - set(available))
    if missing:
        raise MemloraError(f"--sessions {spec!r}: sessions {missing} do not exist (have {available[0]}-{available[-1]})")
    return [n for n in available if n in chosen]


def exchanges(conv: Conversation, sessions: list[int], window: int) -> list[tuple[str, list[Turn]]]:
    """Windows of `window` turns inside each chosen session, keyed `<conversation>:s<N>:<first turn id>`."""
    out = []
    for s in conv.sessions:
        if s.number in sessions:
            for i in range(0, len(s.turns), window):
                chunk = s.turns[i : i + window]
                out.append((f"{conv.id}:s{s.number}:{chunk[0].turn_id}", chunk))
    return out
