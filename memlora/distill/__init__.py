"""Distillation of the expert adapters: teacher examples -> LoRA training -> nested-validation choice."""
