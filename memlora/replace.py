"""Writing an output directory atomically, and replacing only a directory memlora wrote before.

Outputs (bundles, distilled adapters) are written to a staging sibling ``.<name>.partial-*`` and renamed
into place when complete. An existing directory at the destination is replaced only when its `recognise`
check says memlora wrote it and nothing else is inside; anything else is refused before any work starts,
so no command deletes files it did not write.

A killed process (SIGKILL, power loss) cannot clean up after itself, so every staging directory and every
holder of a directory being replaced (``.<name>.old-*``) records its owner (``OWNER``: host and pid). The
next write to the same destination removes abandoned staging directories, and puts back an old directory
whose replacement was cut between its two renames.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import MemloraError

OWNER = ".owner"
"""In a staging or holder directory: `<host> <pid>` of the writing process."""
Recognise = Callable[[Path], str | None]
"""None when the directory is one memlora wrote (and may replace), else why it is not."""


def check_replaceable(out: Path, recognise: Recognise, what: str) -> None:
    """Refuse `out` unless it is missing, an empty directory, or a `what` that `recognise` accepts."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MemloraError(f"{out}: exists and is not a directory; refusing to overwrite it")
    if not out.exists() or not any(out.iterdir()):
        return
    reason = recognise(out)
    if reason is not None:
        raise MemloraError(f"{out}: exists and is not a {what} ({reason}); refusing to overwrite it "
                           "(choose another path or remove it yourself)")


@contextlib.contextmanager
def staging(out: Path, recognise: Recognise, what: str) -> Iterator[Path]:
    """A staging directory for `out` (checked first); removed if the block fails. A failed write (a full
    disk) becomes one line naming the file."""
    out = Path(out).resolve()
    check_replaceable(out, recognise, what)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(out)
        tmp = _owned_dir(out, "partial")
    except OSError as e:
        raise MemloraError(f"{e.filename or out.parent}: cannot start writing the {what} ({e.strerror})") from e
    try:
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        where = e.filename if isinstance(e.filename, str) else tmp
        raise MemloraError(f"{out}: writing the {what} failed at {where} ({e.strerror or e}); nothing was "
                           f"written and any older {what} there is unchanged") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, out: Path, recognise: Recognise, what: str) -> Path:
    """Rename the staging directory `new` to `out`. An older `out` (checked again: it may have changed
    meanwhile) is moved into an owned holder first and deleted last."""
    new, out = Path(new), Path(out).resolve()
    check_replaceable(out, recognise, what)
    holder = None
    if out.exists():
        holder = _owned_dir(out, "old")
        out.rename(holder / out.name)
    (new / OWNER).unlink(missing_ok=True)
    new.rename(out)
    if holder is not None:
        shutil.rmtree(holder, ignore_errors=True)
    return out


def remove_abandoned(out: Path) -> list[Path]:
    """Clean up after writers of `out` on this host that no longer run: delete their staging directories,
    and restore an old `out` left in a holder when `out` itself is missing. Returns what was removed."""
    removed = []
    for tmp in sorted(out.parent.glob(f".{out.name}.old-*")) + sorted(out.parent.glob(f".{out.name}.partial-*")):
        if not _abandoned(tmp):
            continue
        if tmp.name.startswith(f".{out.name}.old-") and (tmp / out.name).is_dir() and not out.exists():
            (tmp / out.name).rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def only_files(directory: Path, allowed: set[str]) -> str | None:
    """None when every entry below `directory` is one of `allowed` ('/'-separated relative paths)."""
    extra = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() or p.is_symlink() or (p.is_dir() and not any(p.iterdir())))
    extra = [e for e in extra if e not in allowed]
    return None if not extra else f"holds {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")


def _owned_dir(out: Path, kind: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    (d / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return d


def _abandoned(d: Path) -> bool:
    try:
        host, pid = (d / OWNER).read_text().split()
    except (OSError, ValueError):
        return False  # not ours to judge: no owner recorded
    return host == socket.gethostname() and not _running(int(pid))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
