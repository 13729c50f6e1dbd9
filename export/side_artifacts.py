"""The bundle's target-independent artifacts -- the embedder and the golden traces -- built in a second process
while the targets export.

Lowering a decoder (torch.export, decompositions, partitioning) is single-threaded Python, so on a machine with
two cores the embedder's exports and the reference's golden decode cost no wall time beside it. The process is
spawned (torch's thread pools do not survive a fork), writes into the same staging directory as the targets, and
is killed when the export it serves fails, before that directory is removed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from memlora.backend import Backend
from memlora.errors import MemloraError

from .embedder import EmbedderSource

GOLDEN_FILE = "golden/traces.jsonl"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class SideJob:
    """What the second process builds, into `bundle_dir` (the staging directory)."""

    model_dir: Path
    adapters_dir: Path
    embedder: EmbedderSource | None
    """The embedder as the export checked it (not read and hashed again here)."""
    embedded: dict[str, str]
    """Targets that get an embedder -> the bundle's --quant."""
    bundle_dir: Path
    golden_tokens: int
    eos_ids: tuple[int, ...]
    reference: Callable[[Path, Path], Backend]
    """(model_dir, adapters_dir) -> the backend golden traces are decoded on; a module-level function, so that
    it pickles into the second process (the export verb passes the transformers+peft pipeline)."""


@dataclass(frozen=True)
class SideResult:
    embedder: dict | None
    """The manifest's ``embedder`` section, None without one."""
    golden_records: int
    seconds: dict[str, float]
    """Wall time of each artifact, for the export's stage log."""


def build(job: SideJob) -> SideResult:
    """Export the embedder for every target in `job.embedded`, then decode the golden prompts on the
    reference (what the user's own reference produces)."""
    import torch

    from memlora import constrain
    from memlora.session import load_tokenizer

    from . import golden
    from . import embedder as embedder_export

    torch.set_num_threads(1)  # the other core is the target export's
    seconds: dict[str, float] = {}
    began = time.monotonic()
    entry = None
    if job.embedder is not None and job.embedded:
        entry = embedder_export.export_embedder(job.embedder, job.embedded, job.bundle_dir)
        seconds["embedder"] = time.monotonic() - began
    began = time.monotonic()
    tokenizer = load_tokenizer(job.model_dir)
    records = golden.write_golden(job.reference(job.model_dir, job.adapters_dir), tokenizer,
                                  set(job.eos_ids), job.bundle_dir / GOLDEN_FILE, job.golden_tokens,
                                  constrain.for_tokenizer(tokenizer))
    seconds["golden traces"] = time.monotonic() - began
    return SideResult(entry, records, seconds)


def _die_with(parent: int) -> None:
    """End this process as soon as the export that started it is gone (killed, too), so that no orphan goes
    on writing into a staging directory the next export clears: the kernel's parent-death signal on Linux,
    a watchdog thread elsewhere."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the signal was armed
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _child(job: SideJob, conn, parent: int) -> None:
    """Send back ("ok", result) or ("error", exception); an exception that does not pickle goes as its text."""
    _die_with(parent)
    try:
        message = ("ok", build(job))
    except BaseException as e:  # noqa: BLE001 -- every failure goes back to the export that waits for it
        message = ("error", e)
    try:
        conn.send(message)
    except Exception:  # noqa: BLE001
        conn.send(("error", MemloraError(f"{type(message[1]).__name__}: {message[1]}")))


class Side:
    """A running side job; `result` waits for it."""

    def __init__(self, job: SideJob):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(job, child, os.getpid()), name="memlora-export-side",
                                 daemon=True)
        self._proc.start()
        child.close()

    def result(self) -> SideResult:
        try:
            kind, value = self._conn.recv()
        except EOFError:
            kind, value = "died", None
        self._proc.join()
        if kind == "died":
            raise MemloraError(f"export: the process building the embedder and the golden traces died before "
                               f"finishing (exit code {self._proc.exitcode}: killed, or out of memory); nothing "
                               f"was written to the bundle")
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._conn.close()


@contextmanager
def running(job: SideJob) -> Iterator[Side]:
    """Start `job` in its own process; kill it if the block fails before its result was taken."""
    side = Side(job)
    try:
        yield side
    finally:
        side.stop()
