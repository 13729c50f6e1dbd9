"""The model's chat format as literal text in the manifest, so a device builds the operations' prompts without
a Jinja engine.

The chat template is rendered once around two marker contents, which splits it into the text before the system
message, between the system and the user message, and after the user message (the generation prompt included).
The split is then checked against the template on every golden prompt: a template whose output depends on
the contents (trims them, branches on them) is refused, naming the tokenizer, rather than shipped as a format
that builds other prompts than `memlora.prompts.render`."""

from __future__ import annotations

from pathlib import Path

from memlora.errors import MemloraError

SYSTEM, USER = "\x00memlora:system\x00", "\x00memlora:user\x00"
EDGES = [("", ""), (" \n", "\n\n"), ("\tsystem ", " user\n"), ("{{ x }}", "{% y %}")]
"""Contents a template that trims, tests or interprets its messages renders differently (with the caller's probes)."""


def _render(tokenizer, system: str, user: str) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def apply(chat: dict[str, str], system: str, user: str) -> str:
    """The prompt text the chat format gives for a system and a user message (what the device core writes)."""
    return chat["before_system"] + system + chat["between"] + user + chat["after_user"]


def chat_format(tokenizer, where: Path, probes: list[tuple[str, str]]) -> dict[str, str]:
    """{"before_system", "between", "after_user"} of `tokenizer`'s chat template (read from `where`), checked
    to render each (system, user) pair of `probes` exactly as the template does."""
    text = _render(tokenizer, SYSTEM, USER)
    if text.count(SYSTEM) != 1 or text.count(USER) != 1 or text.index(SYSTEM) > text.index(USER):
        raise MemloraError(f"{where}: the chat template does not write a system and a user message once each, "
                           "in order; the device core cannot build its prompts from it")
    before, rest = text.split(SYSTEM)
    between, after = rest.split(USER)
    chat = {"before_system": before, "between": between, "after_user": after}
    for system, user in [*EDGES, *probes]:
        if apply(chat, system, user) != _render(tokenizer, system, user):
            raise MemloraError(f"{where}: the chat template changes the messages it renders (it is not literal "
                               "text around them); the device core cannot build its prompts from it")
    return chat
