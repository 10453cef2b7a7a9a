"""Checkpoint files: atomic writes, weights-only reads, loading into models, transfer between models, reference conversion."""
