"""The golden prompt set: deterministic, built with the pipeline's own prompt code from the bundle's templates.

Two parts:
- a scripted multi-session conversation (`GOLDEN`) whose sessions ADD, UPDATE and DELETE memories and
  whose questions need them: its extract / mem_update / answer prompts (built from the scripted facts and
  memories, so they do not depend on any model's output) feed the tensor and token levels, and the
  conversation itself is what the task level runs through the whole pipeline;
- held prompts of growing length up to the context limit (long conversations to extract from, many facts
  to update and memories to answer from), which exercise chunked prefill and long attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from memlora import prompts
from memlora.errors import MemloraError
from memlora.prompts import Memory, Turn


@dataclass(frozen=True)
class Conversation:
    """Exchanges to ingest (key, turns), questions to ask, and the facts/memories a perfect model would have
    after each exchange (used to build model-independent mem_update and answer prompts)."""

    exchanges: list[tuple[str, list[Turn]]]
    questions: list[str]
    facts: list[list[str]]
    memories_before: list[list[Memory]]
    final_memories: list[Memory]


def _session(n: int, date: str, lines: list[tuple[str, str]]) -> tuple[str, list[Turn]]:
    turns = [Turn(s, t, date, f"D{n}:{i}") for i, (s, t) in enumerate(lines, 1)]
    return f"golden:s{n}", turns


_D1, _D2, _D3 = "8 May 2023", "20 May 2023", "2 June 2023"
GOLDEN = Conversation(
    exchanges=[
        _session(1, _D1, [("Caroline", "I started learning the guitar last week."),
                          ("Melanie", "Nice! I'm moving to Boston in June for a new job.")]),
        _session(2, _D2, [("Caroline", "I now play the guitar in a band every Friday."),
                          ("Melanie", "My plans changed, I'm not moving to Boston after all.")]),
        _session(3, _D3, [("Caroline", "My sister Anna came to visit me this weekend."),
                          ("Melanie", "I adopted a cat called Luna.")]),
    ],
    questions=["What instrument does Caroline play?", "Is Melanie moving to Boston?",
               "What is the name of Melanie's cat?"],
    facts=[
        ["Caroline started learning the guitar", "Melanie is moving to Boston in June for a new job"],
        ["Caroline plays the guitar in a band every Friday", "Melanie is not moving to Boston"],
        ["Caroline's sister Anna visited her", "Melanie adopted a cat called Luna"],
    ],
    memories_before=[
        [],
        [Memory("m0", "Caroline started learning the guitar", _D1),
         Memory("m1", "Melanie is moving to Boston in June for a new job", _D1)],
        [Memory("m0", "Caroline plays the guitar in a band every Friday", _D2)],
    ],
    final_memories=[
        Memory("m0", "Caroline plays the guitar in a band every Friday", _D2),
        Memory("m2", "Caroline's sister Anna visited her", _D3),
        Memory("m3", "Melanie adopted a cat called Luna", _D3),
    ],
)

_FILLER = [
    ("Ana", "I spent the morning repairing the old bicycle my grandfather gave me."),
    ("Ben", "I finally finished reading the history of the Silk Road I borrowed in March."),
    ("Ana", "My brother Tom is training for a marathon in Lisbon next October."),
    ("Ben", "We planted tomatoes, basil and two lemon trees in the garden behind the house."),
    ("Ana", "I signed up for a pottery class on Tuesday evenings at the community centre."),
    ("Ben", "Our team at work switched to a four-day week, and I use Fridays to volunteer."),
    ("Ana", "I am allergic to cats, so we are thinking about adopting a small dog instead."),
    ("Ben", "My daughter Mia won second prize in the regional chess tournament on Sunday."),
]


@dataclass(frozen=True)
class GoldenPrompt:
    label: str
    op: str
    ids: list[int]
    shown: int = 0  # memories an update prompt shows: picks its output constraint's table


def check_templates(manifest: dict) -> None:
    """The golden set and the pipeline use `memlora.prompts`; a bundle exported with other templates would be
    judged on prompts its app never builds, so refuse it."""
    if manifest["prompts"]["templates"] != prompts.TEMPLATES:
        raise MemloraError("bundle manifest: its prompt templates differ from this memlora's "
                           "(memlora.prompts.TEMPLATES); re-export the bundle with this version")


def _messages(op: str, n_items: int, date: str = _D3) -> tuple[list[dict[str, str]], int]:
    """A held prompt of operation `op` with `n_items` filler turns / memories, and the memories it shows with
    ids. An update prompt shows at most MAX_SHOWN memories, as the pipeline does; its other items are facts."""
    items = [(_FILLER[i % len(_FILLER)][0], f"{_FILLER[i % len(_FILLER)][1]} ({i + 1})") for i in range(n_items)]
    if op == "extract":
        return prompts.extract_messages([Turn(s, t, date, f"H:{i}") for i, (s, t) in enumerate(items)]), 0
    memories = [Memory(f"m{i}", f"{s} said: {t}", date) for i, (s, t) in enumerate(items)]
    if op == "mem_update":
        shown, facts = memories[: prompts.MAX_SHOWN], [m.text for m in memories[prompts.MAX_SHOWN :]]
        return prompts.update_messages(["Ana adopted a small dog called Pepper", *facts], shown), len(shown)
    return prompts.answer_messages("What did Ana sign up for?", memories), 0


def _held(tokenizer, op: str, length: int) -> tuple[list[int], int]:
    """The longest held prompt of `op` that fits in `length` tokens (grown one filler item at a time), and the
    memories it shows."""
    messages, shown = _messages(op, 1)
    best = prompts.render(tokenizer, messages), shown
    n = 2
    while True:
        messages, shown = _messages(op, n)
        ids = prompts.render(tokenizer, messages)
        if len(ids) > length:
            return best
        best, n = (ids, shown), n + 1


def held_lengths(max_context: int, decode_tokens: int, quick: bool) -> list[int]:
    """Prompt lengths for the held set: short to as long as the context allows (leaving room to decode)."""
    limit = max_context - decode_tokens - 1
    lengths = [64, 256] if quick else [64, 256, 1024, limit]
    return sorted({min(n, limit) for n in lengths})


def golden_prompts(tokenizer, conversation: Conversation, max_context: int, decode_tokens: int,
                   quick: bool = False) -> list[GoldenPrompt]:
    """The scripted conversation's prompts per operation, then the held prompts of growing length."""
    c = conversation
    out: list[GoldenPrompt] = []
    sessions = range(1 if quick else len(c.exchanges))
    for i in sessions:
        out.append(GoldenPrompt(f"extract s{i + 1}", "extract", prompts.render(tokenizer, prompts.extract_messages(c.exchanges[i][1]))))
        out.append(GoldenPrompt(f"mem_update s{i + 1}", "mem_update",
                                prompts.render(tokenizer, prompts.update_messages(c.facts[i], c.memories_before[i])),
                                len(c.memories_before[i])))
    for j, q in enumerate(c.questions[: 1 if quick else None]):
        out.append(GoldenPrompt(f"answer q{j + 1}", "answer", prompts.render(tokenizer, prompts.answer_messages(q, c.final_memories))))
    ops = ("extract", "answer", "mem_update")
    for k, length in enumerate(held_lengths(max_context, decode_tokens, quick)):
        op = ops[k % len(ops)]
        ids, shown = _held(tokenizer, op, length)
        out.append(GoldenPrompt(f"held {op} {len(ids)} tok", op, ids, shown))
    return out
