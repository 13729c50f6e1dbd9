"""Mem0's memory pipeline on any backend: extract facts, retrieve, decide ADD/UPDATE/DELETE/NONE, apply;
answer from retrieved memories. Written once; backends differ only in their forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import constrain
from .backend import Backend
from .constrain import Constraints
from .generate import Generation, GenerationConfig, PromptTooLong, generate
from .parse import MalformedOutput, parse_answer, parse_facts, parse_update
from .prompts import MAX_NEW_TOKENS, MAX_SHOWN, STOP, Memory, Turn, answer_messages, extract_messages, render, update_messages
from .store import Change, MemoryStore
from .trace import TraceWriter


TOP_K, ANSWER_K = 5, 10
"""Memories retrieved per new fact for an update, and for a question (a bundle's manifest carries both, with
`MAX_SHOWN`, so the device core retrieves as this pipeline does)."""

SKIPPED = {"malformed": "malformed model output", "too_long": "longer than the model's context"}
"""Statuses of exchanges recorded as done without changes because of a problem, and what to call it."""


@dataclass
class ExchangeResult:
    key: str
    status: str  # applied | no_facts | done_before | one of SKIPPED
    facts: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # (event, memory id)
    error: str = ""
    turn_ids: list[str] = field(default_factory=list)


@dataclass
class Answer:
    text: str
    memories: list[Memory]


class MemoryPipeline:
    """Runs the three operations on `backend`, switching to the operation's adapter when it has one, each
    output held to the operation's constraint: `constraints` (a bundle's), else compiled from `tokenizer`."""

    def __init__(
        self,
        backend: Backend,
        tokenizer,
        store: MemoryStore,
        embedder,
        use_adapters: bool = True,
        top_k: int = TOP_K,
        answer_k: int = ANSWER_K,
        trace: TraceWriter | None = None,
        constraints: Constraints | None = None,
    ):
        self.backend, self.tokenizer, self.store, self.embedder = backend, tokenizer, store, embedder
        self.use_adapters, self.top_k, self.answer_k, self.trace = use_adapters, top_k, answer_k, trace
        self.eos_ids = eos_ids(tokenizer)
        self.constraints = constraints or constrain.for_tokenizer(tokenizer)

    def adapter_for(self, op: str) -> str | None:
        return op if self.use_adapters and op in self.backend.adapters else None

    def run(self, op: str, messages: list[dict[str, str]], shown: int = 0) -> Generation:
        """Generate `op`'s reply to `messages` (`shown`: memories an update prompt shows)."""
        config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS[op], stop=STOP[op])
        ids = render(self.tokenizer, messages)
        return generate(self.backend, self.tokenizer, ids, self.adapter_for(op), config, self.eos_ids, op, self.trace,
                        self.constraints.for_op(op, shown))

    def ingest(self, key: str, turns: list[Turn]) -> ExchangeResult:
        """Process one exchange; its changes land in one transaction, or nothing lands.

        An exchange the model cannot handle (malformed output, a prompt longer than the context) is
        recorded as skipped with its reason, so ingest moves on and a rerun does not stop there again."""
        turn_ids = [t.turn_id for t in turns]
        if self.store.is_done(key):
            return ExchangeResult(key, "done_before", turn_ids=turn_ids)

        def skip(status: str, facts: list[str] | None, op: str | None = None, raw: str | None = None,
                 error: str = "") -> ExchangeResult:
            if not self.store.record_skipped(key, turn_ids, status, facts, op, raw, error or None):
                return ExchangeResult(key, "done_before", turn_ids=turn_ids)
            return ExchangeResult(key, status, facts or [], error=f"{op}: {error}" if op else error, turn_ids=turn_ids)

        try:
            raw = self.run("extract", extract_messages(turns)).text
        except PromptTooLong as e:
            return skip("too_long", None, "extract", None, str(e))
        try:
            facts = parse_facts(raw)
        except MalformedOutput as e:
            return skip("malformed", None, "extract", raw, str(e))
        if not facts:
            return skip("no_facts", facts)
        fact_vecs = self.embedder.embed(facts)
        related = self._related(fact_vecs)
        try:
            raw = self.run("mem_update", update_messages(facts, related), len(related)).text
        except PromptTooLong as e:
            return skip("too_long", facts, "mem_update", None, str(e))
        try:
            events = parse_update(raw, {str(i) for i in range(len(related))})
        except MalformedOutput as e:
            return skip("malformed", facts, "mem_update", raw, str(e))
        new_texts = [e.text for e in events if e.event in ("ADD", "UPDATE")]
        vecs = iter(self.embedder.embed(new_texts)) if new_texts else iter(())
        changes = [
            Change(
                e.event,
                None if e.id is None else related[int(e.id)].id,
                e.text,
                next(vecs) if e.event in ("ADD", "UPDATE") else None,
            )
            for e in events
        ]
        ids = self.store.apply(key, turn_ids, turns[0].date, facts, changes)
        if ids is None:
            return ExchangeResult(key, "done_before", turn_ids=turn_ids)
        applied = [c.event for c in changes if c.event != "NONE"]
        return ExchangeResult(key, "applied", facts, list(zip(applied, ids)), turn_ids=turn_ids)

    def _related(self, fact_vecs) -> list[Memory]:
        """The union of each fact's top-k stored memories, best score first, at most MAX_SHOWN of them."""
        best: dict[str, Memory] = {}
        for v in fact_vecs:
            for m in self.store.search(v, self.top_k):
                if m.id not in best or m.score > best[m.id].score:
                    best[m.id] = m
        return sorted(best.values(), key=lambda m: -m.score)[:MAX_SHOWN]

    def answer(self, question: str) -> Answer:
        memories = self.store.search(self.embedder.embed([question])[0], self.answer_k)
        return Answer(parse_answer(self.run("answer", answer_messages(question, memories)).text), memories)


def eos_ids(tokenizer) -> set[int]:
    """Token ids that end a reply: the tokenizer's eos plus the chat template's end-of-turn marker."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return ids
