"""The `memlora` command: one module per verb, each a library function plus a thin `main`."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys

import typer

from .errors import MemloraError

# Optional torchao kernels (CUDA, mxfp8) and torch's pytree deprecations log warnings at import that say
# nothing about the user's work; weight-loading progress bars from transformers likewise.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Help is plain text: rich markup would parse the `[default: ...]` that option help strings state as a tag
# and drop it.
HELP_MARKUP = None
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=HELP_MARKUP, help="Memory-augmented small LMs with LoRA expert adapters, exported to phones and parity-checked.")

VERBS = {
    "setup": "memlora.setup",
    "ingest": "memlora.ingest",
    "ask": "memlora.ask",
    "memories": "memlora.memories",
    "distill": "memlora.distill.command",
    "demo": "memlora.demo",
    "export": "memlora.export.command",
    "bench": "memlora.runtime.bench.command",
    "parity": "memlora.runtime.parity.command",
    "matrix": "memlora.matrix",
    "eval locomo": "memlora.eval_locomo",
    "eval convs": "memlora.eval_convs",
}
"""Verb -> module; a two-word verb is a subcommand of its first word's group."""


def _friendly(fn):
    """Turn a MemloraError into one clear line on stderr and exit code 2, instead of a traceback."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MemloraError as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)

    return run


eval_app = typer.Typer(no_args_is_help=True, rich_markup_mode=HELP_MARKUP,
                       help="Score the memory pipeline on a benchmark or on conversations with known truth.")
GROUPS = {"eval": eval_app}
for _verb, _module in VERBS.items():
    _group, _, _sub = _verb.rpartition(" ")
    (GROUPS[_group] if _group else app).command(_sub)(_friendly(importlib.import_module(_module).main))
app.add_typer(eval_app, name="eval")
