"""The decoder's tokenizer for a bundle backend, on the `tokenizers` library and jinja2 alone.

transformers' AutoTokenizer imports torch, which an app-like bundle run (``memlora ask --backend onnx``) must
not pay for. This reads the same files transformers reads from a bundle's ``tokenizer/`` directory
(tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja) and renders, encodes and
decodes as transformers does, so the token ids every prompt gets are identical on the torch and bundle paths
(tests/test_bundle_tokenizer.py checks that against transformers).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .errors import MemloraError

NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
"""The named special tokens transformers passes to a chat template (its `special_tokens_map`)."""

CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
           (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
"""transformers' `clean_up_tokenization`, applied on decode when the config asks for it (never for BPE)."""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MemloraError(f"{path}: cannot read ({e})") from e
    if not isinstance(data, dict):
        raise MemloraError(f"{path}: not a JSON object")
    return data


def _token_text(value, source: Path, key: str) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or a serialized AddedToken."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise MemloraError(f"{source}: {key} is neither a string nor an AddedToken")


def _special_tokens(directory: Path, config: dict) -> dict[str, str]:
    """Named special tokens: tokenizer_config.json's, overridden by a legacy special_tokens_map.json only when
    the config has no `added_tokens_decoder` (transformers' rule)."""
    values = {k: config.get(k) for k in NAMED_SPECIALS}
    source = {k: directory / "tokenizer_config.json" for k in NAMED_SPECIALS}
    legacy = directory / "special_tokens_map.json"
    if "added_tokens_decoder" not in config and legacy.is_file():
        for key, value in _read_json(legacy).items():
            if key in values:
                values[key], source[key] = value, legacy
    texts = {k: _token_text(v, source[k], k) for k, v in values.items()}
    return {k: v for k, v in texts.items() if v is not None}


def _chat_template(directory: Path, config: dict) -> str:
    """chat_template.jinja when present (it takes priority in transformers), else the config's template (a
    string, or a list of named templates whose "default" is used)."""
    file = directory / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if not isinstance(template, str):
        raise MemloraError(f"{directory}: no chat template (chat_template.jinja, or chat_template in "
                           "tokenizer_config.json)")
    return template


def _compile(template: str, directory: Path):
    """The template in the environment transformers renders chat templates in: immutable sandbox, trimmed
    blocks, loop controls, its `tojson`, `raise_exception` and `strftime_now`, and `{% generation %}` blocks
    (which only mark assistant text, so they render their body)."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise MemloraError(f"{directory}: the chat template does not parse (line {e.lineno}: {e.message})") from e


class BundleTokenizer:
    """The subset of a transformers tokenizer the pipeline and the decode loop use: `apply_chat_template`,
    `encode`, `decode`, `convert_tokens_to_ids`, `eos_token_id`, `unk_token_id`."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer

        self.directory = directory = Path(directory)
        tok_file = directory / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises its own Exception type for unreadable files
            raise MemloraError(f"{tok_file}: cannot load tokenizer ({e})") from e
        config_file = directory / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
        self.special_tokens_map = _special_tokens(directory, config)
        self._template = _compile(_chat_template(directory, config), directory)
        self._cleanup = bool(config.get("clean_up_tokenization_spaces", False)) and \
            type(self._tokenizer.model).__name__ != "BPE"
        self.unk_token_id = self._id_of(self.special_tokens_map.get("unk_token"))
        self.eos_token_id = self._id_of(self.special_tokens_map.get("eos_token"))
        self.bos_token_id = self._id_of(self.special_tokens_map.get("bos_token"))

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.convert_tokens_to_ids(token)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The token's id, or the unk id for a token not in the vocabulary (as transformers answers)."""
        found = self._tokenizer.token_to_id(token)
        return found if found is not None else self.unk_token_id

    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str | list[int]:
        """`conversation` rendered with the variables transformers passes (messages, tools, documents,
        add_generation_prompt and the named special tokens); ids without added special tokens if `tokenize`."""
        import jinja2

        try:
            text = self._template.render(messages=conversation, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens_map)
        except jinja2.TemplateError as e:
            raise MemloraError(f"{self.directory}: the chat template cannot render these messages ({e})") from e
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`; special tokens written in it are matched as tokens, as transformers does."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self._cleanup:
            for old, new in CLEANUP:
                text = text.replace(old, new)
        return text
