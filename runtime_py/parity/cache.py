"""The fp32 reference's outputs, computed once per model + adapters + golden set + settings and replayed.

Loading transformers+peft and running the golden set and the scripted conversation on it is the same work
on every parity run of a model, whatever the bundle. The first run records every logits array the
reference returns (`Recording`); a later run with the same key replays them in order (`Replay`), so the
golden set's greedy tokens, every metric and the reference's task run come out identical. The key is the
sha256 of everything the outputs depend on: the model directory's files, the adapter files, the bundle's
tokenizer and eos ids, the golden prompt ids, the decode budget, the quick flag, the conversation, whether
the task level ran, and the memlora, torch and transformers versions.

An entry is a directory ``<home>/parity-cache/<key>/`` of ``<call>.npy`` files and ``meta.json`` (each call's
argument digest and each file's sha256), written aside and renamed into place; an entry that does not
verify is ignored with a note and rebuilt. A run that fails leaves nothing: the unfinished directory is a
TemporaryDirectory, removed when the cache object goes away.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from memlora.backend import Backend
from memlora.checksum import sha256_file
from memlora.errors import MemloraError

META = "meta.json"
FORMAT = "memlora-parity-cache/1"


def default_root() -> Path:
    """`MEMLORA_PARITY_CACHE` if set (a CI job may cache it on its own), else ``<memlora home>/parity-cache``."""
    import os

    from memlora.paths import home

    return Path(os.environ.get("MEMLORA_PARITY_CACHE") or home() / "parity-cache")


def reference_context(model_dir: Path) -> int:
    """The fp32 reference's context (its config's ``max_position_embeddings``), known before loading it."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(Path(model_dir)).max_position_embeddings)


def _tree(digest, root: Path) -> None:
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())


def reference_key(model_dir: Path, adapters_dir: Path, tokenizer_dir: Path, settings: dict) -> str:
    """sha256 of the files the reference reads and of `settings` (golden ids, decode budget, flags, ...)."""
    import torch
    import transformers

    from memlora import __version__

    digest = hashlib.sha256(FORMAT.encode())
    for label, root in (("model", model_dir), ("adapters", adapters_dir), ("tokenizer", tokenizer_dir)):
        digest.update(f"[{label}]\n".encode())
        _tree(digest, root)
    versions = {"memlora": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    digest.update(json.dumps({**settings, **versions}, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def _call(tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> str:
    return hashlib.sha256(json.dumps([list(map(int, tokens)), start, adapter, all_logits]).encode()).hexdigest()[:16]


class Recording:
    """The real reference, writing each forward call's logits into the unfinished entry as it returns them."""

    def __init__(self, backend: Backend, folder: Path):
        self.backend, self.folder = backend, folder
        self.name, self.adapters, self.max_context = backend.name, backend.adapters, backend.max_context
        self.calls: list[str] = []

    def reset(self) -> None:
        self.backend.reset()

    def forward(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool = False) -> np.ndarray:
        logits = self.backend.forward(tokens, start, adapter, all_logits)
        np.save(self.folder / f"{len(self.calls)}.npy", logits)
        self.calls.append(_call(tokens, start, adapter, all_logits))
        return logits


class Replay:
    """A recorded reference: the same calls in the same order get the recorded logits back."""

    def __init__(self, entry: Path, meta: dict):
        self.entry, self.calls = entry, meta["calls"]
        self.name, self.adapters, self.max_context = meta["name"], tuple(meta["adapters"]), meta["max_context"]
        self._next = 0

    def reset(self) -> None:
        """The recorded logits already reflect every reset the recording saw."""

    def forward(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool = False) -> np.ndarray:
        n = self._next
        if n >= len(self.calls) or self.calls[n] != _call(tokens, start, adapter, all_logits):
            shutil.rmtree(self.entry, ignore_errors=True)
            raise MemloraError(f"{self.entry}: the cached reference was recorded for other calls (call {n}); "
                               "removed it, rerun to rebuild")
        self._next += 1
        return np.load(self.entry / f"{n}.npy")


class ReferenceCache:
    """Hands out the fp32 reference for one parity run: replayed from `root`/`key`, or loaded and recorded."""

    def __init__(self, root: Path | None, key: str, progress: Callable[[str], None]):
        self.root, self.key, self.progress = root, key, progress
        self._real: Backend | None = None
        self._recording: Recording | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def entry(self) -> Path:
        return Path(self.root) / self.key

    def _verified(self) -> dict | None:
        """The entry's meta if every file is there with its recorded sha256; None (with a note) otherwise."""
        if not self.entry.exists():
            return None
        try:
            meta = json.loads((self.entry / META).read_text())
            if meta.get("format") != FORMAT or len(meta["files"]) != len(meta["calls"]):
                raise ValueError("not a cache entry of this format")
            for n, sha in enumerate(meta["files"]):
                if sha256_file(self.entry / f"{n}.npy") != sha:
                    raise ValueError(f"{n}.npy does not match its checksum")
            return meta
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.progress(f"note: ignoring the corrupt reference cache {self.entry} ({e}); rebuilding it")
            return None

    def reference(self, load: Callable[[], Backend]) -> Backend:
        """The reference to run the golden set and the task level on."""
        meta = None if self.root is None else self._verified()
        if meta is not None:
            self.progress(f"fp32 reference: replayed from {self.entry}")
            return Replay(self.entry, meta)
        self._real = load()
        if self.root is None:
            return self._real
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix=f".{self.key}.", dir=self.root, ignore_cleanup_errors=True)
        self._recording = Recording(self._real, Path(self._tmp.name))
        return self._recording

    def commit(self) -> None:
        """Publish what was recorded (replacing a corrupt entry); nothing to do on a replay or without a cache."""
        if self._recording is None:
            return
        rec, folder = self._recording, Path(self._tmp.name)
        meta = {"format": FORMAT, "name": rec.name, "adapters": list(rec.adapters), "max_context": rec.max_context,
                "calls": rec.calls, "files": [sha256_file(folder / f"{n}.npy") for n in range(len(rec.calls))]}
        (folder / META).write_text(json.dumps(meta))
        shutil.rmtree(self.entry, ignore_errors=True)
        try:
            os.replace(folder, self.entry)
        except OSError:  # another run published the same entry meanwhile: keep theirs
            pass
        self._recording = None
        self.progress(f"fp32 reference: cached in {self.entry}")

    def real(self, load: Callable[[], Backend]) -> Backend:
        """The live reference (device traces are replayed on it): the one loaded for recording, else `load()`."""
        if self._real is None:
            self._real = load()
        return self._real
