"""memlora.export: the export-friendly decoder, LoRA adapters, the bundle, and one module per target."""
