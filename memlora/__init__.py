"""memlora: a small language model with LoRA expert adapters for memory, exported to phones."""

__version__ = "0.4.1"

OPERATIONS = ("extract", "mem_update", "answer")
"""Adapter names, one per memory operation (`update` would clash with a PEFT module attribute)."""
