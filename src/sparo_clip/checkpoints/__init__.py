"""Checkpoint files: atomic writes, weights-only reads, loading into models, sharing (local-dir: / hf-hub: folders), transfer between models, reference conversion."""
