"""The synthetic shapes world: vocabulary and held-out pairs, captions, rendering, evaluation sets, generation."""
