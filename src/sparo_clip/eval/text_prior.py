"""A text-only control for image-text matching sets: how far the captions alone pick the right one.

SugarCrepe (Hsieh et al., 2023) was built so that a model reading only the two captions cannot tell the true one
from the wrong one. :class:`BigramScorer` is such a reader: a word bigram language model with add-k smoothing,
fit on the training captions, that prefers the caption it finds more probable. Its accuracy on a set is the
set's caption prior; on a set without text-only shortcuts it sits near 0.5.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[a-z]+|[^\sa-z]")
BOS, EOS = "<s>", "</s>"


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of a caption."""
    return _WORD.findall(text.lower())


class BigramScorer:
    """Word bigram log-probabilities with add-k smoothing (every word pair keeps some probability).

    Args:
        captions: the captions to fit on (the training captions).
        k: the pseudo-count added to every bigram (0 < k).
    """

    def __init__(self, captions: Iterable[str], k: float = 0.1) -> None:
        if not k > 0:
            raise ValueError(f"k={k!r} must be > 0")
        self.k = k
        self.unigrams: Counter[str] = Counter()
        self.bigrams: Counter[tuple[str, str]] = Counter()
        for caption in captions:
            seq = [BOS, *words(caption), EOS]
            self.unigrams.update(seq[:-1])
            self.bigrams.update(zip(seq[:-1], seq[1:], strict=False))
        if not self.unigrams:
            raise ValueError("BigramScorer needs at least one caption to fit on")
        self.vocab = {w for pair in self.bigrams for w in pair} | {EOS}

    def log_prob(self, text: str) -> float:
        """log P(text) under the smoothed bigram model (unknown words share the smoothing mass)."""
        seq = [BOS, *words(text), EOS]
        size = len(self.vocab) + 1  # one slot for every unknown word
        total = 0.0
        for prev, word in zip(seq[:-1], seq[1:], strict=False):
            count = self.bigrams[(prev, word)]
            total += math.log((count + self.k) / (self.unigrams[prev] + self.k * size))
        return total

    def prefers(self, positive: str, negative: str) -> float:
        """1 when the positive caption is more probable, 0 when the negative is, 0.5 on a tie."""
        a, b = self.log_prob(positive), self.log_prob(negative)
        return 1.0 if a > b + 1e-9 else 0.0 if b > a + 1e-9 else 0.5


def text_only_accuracy(
    scorer: BigramScorer, positives: Sequence[str], negatives: Sequence[str]
) -> list[float]:
    """Per item: whether the scorer prefers the true caption (1, 0, or 0.5 for a tie)."""
    if len(positives) != len(negatives):
        raise ValueError(f"{len(positives)} true captions but {len(negatives)} wrong ones")
    return [scorer.prefers(p, n) for p, n in zip(positives, negatives, strict=True)]
