"""`python -m memlora` is the `memlora` command."""

from memlora.cli import app

app()
