"""One exception type the CLI turns into a clear message and a non-zero exit code."""


class MemloraError(Exception):
    """A problem the user can act on; the message names the file and what is wrong with it."""
