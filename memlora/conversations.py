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


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise MemloraError(f"{path}: cannot read {what} ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise MemloraError(f"{path}: {what} is not UTF-8 text (bad byte at offset {e.start})") from e


def load_locomo(path: Path) -> Conversation:
    """Load one LoCoMo conversation: the flat per-file layout or an entry of the official `locomo10.json`."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path, "LoCoMo conversation"))
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the decoder goes
        raise MemloraError(f"{path}: cannot read LoCoMo conversation ({e})") from e
    if isinstance(data, list):
        if len(data) != 1:
            raise MemloraError(f"{path}: holds {len(data)} conversations; pass a file with one")
        data = data[0]
    if not isinstance(data, dict):
        raise MemloraError(f"{path}: not a LoCoMo conversation (top level is {type(data).__name__})")
    conv = data.get("conversation", data)
    obs = data.get("observation", data)
    if not isinstance(conv, dict) or not isinstance(obs, dict):
        raise MemloraError(f"{path}: not a LoCoMo conversation ('conversation' and 'observation' must be objects)")
    speakers = tuple(conv.get(k) for k in ("speaker_a", "speaker_b"))
    if not all(isinstance(sp, str) and sp for sp in speakers):
        raise MemloraError(f"{path}: not a LoCoMo conversation (speaker_a and speaker_b must be names)")
    numbers = sorted(int(k.split("_")[1]) for k in conv if re.fullmatch(r"session_\d+", k))
    sessions = []
    for n in numbers:
        raw_date = conv.get(f"session_{n}_date_time", "")
        turns_raw = conv[f"session_{n}"] or []
        if not isinstance(turns_raw, list):
            raise MemloraError(f"{path}: session_{n} must be a list of turns, not {type(turns_raw).__name__}")
        if not isinstance(raw_date, str) or (turns_raw and not raw_date.strip()):
            raise MemloraError(f"{path}: session_{n}_date_time is missing or not text (every memory needs its date)")
        date = display_date(raw_date)
        turns = [_locomo_turn(path, n, i, t, date) for i, t in enumerate(turns_raw)]
        if turns:
            sessions.append(Session(n, date, turns, _observations(path, n, obs.get(f"session_{n}_observation"))))
    if not sessions:
        raise MemloraError(f"{path}: the conversation has no sessions with turns")
    qa = data.get("qa", [])
    if not isinstance(qa, list) or not all(isinstance(q, dict) for q in qa):
        raise MemloraError(f"{path}: 'qa' must be a list of question objects")
    return Conversation(str(data.get("sample_id", path.stem)), speakers, sessions, qa)


def _locomo_turn(path: Path, session: int, index: int, t, date: str) -> Turn:
    where = f"{path}: session_{session} turn {index + 1}"
    if not isinstance(t, dict):
        raise MemloraError(f"{where}: must be an object with speaker and text, not {type(t).__name__}")
    speaker, text = t.get("speaker"), t.get("text", "")
    if not isinstance(speaker, str) or not speaker:
        raise MemloraError(f"{where}: 'speaker' must be a name")
    if not isinstance(text, str):
        raise MemloraError(f"{where}: 'text' must be a string")
    caption = t.get("blip_caption")
    if caption:
        text += f" [shares a photo: {caption}]"
    turn_id = t.get("dia_id", f"D{session}:{index + 1}")
    return Turn(speaker, text, date, str(turn_id))


def _observations(path: Path, session: int, raw) -> dict[str, list[tuple[str, str]]]:
    """LoCoMo's per-speaker `[fact, evidence id]` pairs (the gold for extraction scores)."""
    if not raw:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise MemloraError(f"{path}: session_{session}_observation must map speakers to lists of facts")
    return {sp: [(str(f[0]), str(f[1])) for f in facts if isinstance(f, list) and len(f) >= 2]
            for sp, facts in raw.items()}


def load_jsonl_turns(path: Path) -> Conversation:
    """A JSONL of `{"speaker", "text", "date"}` turns (all three strings); a change of date starts a new
    session."""
    path = Path(path)
    sessions: list[Session] = []
    for n, line in enumerate(_read_text(path, "turns file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise MemloraError(f"{path}:{n}: not JSON ({e})") from e
        if not isinstance(obj, dict):
            raise MemloraError(f"{path}:{n}: expected a JSON object with speaker, text and date")
        bad = [k for k in ("speaker", "text", "date") if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if bad:
            raise MemloraError(f"{path}:{n}: {', '.join(map(repr, bad))} missing or not text "
                               "(every turn needs a speaker, a text and a date, as strings)")
        turn = Turn(obj["speaker"], obj["text"], display_date(obj["date"]), f"L{n}")
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
    """'1-3,5' -> [1, 2, 3, 5]; every session named must exist (a typo is an error, not a silent no-op)."""
    if not available:
        raise MemloraError("the conversation has no sessions")
    if spec is None:
        return available
    have = f"have {_ranges(available)}"
    chosen: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise MemloraError(f"--sessions {spec!r}: expected numbers and ranges such as 1-3,5")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise MemloraError(f"--sessions {spec!r}: {lo}-{hi} is an empty range (write {hi}-{lo})")
        if lo < available[0] or hi > available[-1]:
            missing = lo if lo < available[0] else hi
            raise MemloraError(f"--sessions {spec!r}: there is no session {missing} ({have})")
        inside = [n for n in available if lo <= n <= hi]
        gaps = sorted(set(range(lo, hi + 1)) - set(inside))  # bounded: lo..hi lies within the sessions
        if gaps:
            raise MemloraError(f"--sessions {spec!r}: sessions {gaps} do not exist ({have})")
        chosen.update(inside)
    return [n for n in available if n in chosen]


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        if n is not None:
            start = prev = n
    return ",".join(out)


def exchanges(conv: Conversation, sessions: list[int], window: int) -> list[tuple[str, list[Turn]]]:
    """Windows of `window` turns inside each chosen session, keyed `<conversation>:s<N>:<first turn id>`."""
    out = []
    for s in conv.sessions:
        if s.number in sessions:
            for i in range(0, len(s.turns), window):
                chunk = s.turns[i : i + window]
                out.append((f"{conv.id}:s{s.number}:{chunk[0].turn_id}", chunk))
    return out
