"""Word accuracy of a transcript against its reference: normalised words and word edit distance."""

from __future__ import annotations

from collections.abc import Sequence


def normalize_words(text: str) -> list[str]:
    """Lower case, hyphens as spaces, everything but letters, digits and apostrophes dropped."""
    cleaned = "".join(c if c.isalnum() or c == "'" else " " for c in text.lower().replace("-", " "))
    return cleaned.split()


def word_edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance in words (substitutions, insertions, deletions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
    return row[-1]
