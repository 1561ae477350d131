"""Close matches for a mistyped name: the "did you mean" of every error that names a choice.

Used for model names (:func:`perturbnn.build_model`), option names of the builders, names
checked by :func:`perturbnn._validation.check_choice`, and by the reproduction harness for
experiment names and command-line flags.

A candidate is suggested when it is within a small edit distance of the typed name (at most
one edit per three characters, at least one; a swap of two neighbouring characters counts as
one edit), or when the typed name is the start of it (three characters at least). Case is
ignored and ``_`` and ``-`` count as the same character, so ``perturb-resnet18`` finds
``perturb_resnet18`` and ``--first_filter`` finds ``--first-filter-size``. Anything else gets
no suggestion: a suggestion that is not close (``pnn-nonexistent`` -> ``no-noise-1x1``)
misleads more than none.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["close_matches", "did_you_mean", "edit_distance"]


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) turning ``a`` into ``b``.

    The optimal-string-alignment distance (Damerau-Levenshtein without repeated edits of one
    substring), computed row by row in ``O(len(a) * len(b))`` time.
    """
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[len(b)]


def _key(name: str) -> str:
    return name.lower().replace("_", "-").lstrip("-")


def close_matches(word: str, candidates: Iterable[str], *, n: int = 3) -> list[str]:
    """Up to ``n`` of ``candidates`` close to ``word``, closest first (ties: given order).

    Args:
        word: the name typed.
        candidates: the valid names.
        n: the most matches returned.

    Returns:
        list[str]: the matches (empty when none is close; never ``word`` itself unless it is a
        candidate spelled differently, e.g. with ``-`` for ``_``).
    """
    typed = _key(word)
    limit = max(1, len(typed) // 3)
    scored: list[tuple[int, int, str]] = []
    for order, candidate in enumerate(dict.fromkeys(candidates)):
        key = _key(candidate)
        distance = edit_distance(typed, key)
        if distance <= limit:
            scored.append((distance, order, candidate))
        elif len(typed) >= 3 and key.startswith(typed):
            scored.append((limit + 1, order, candidate))
    scored.sort()
    if scored and scored[0][0] == 0:  # the same name spelled differently: only that one
        scored = [entry for entry in scored if entry[0] == 0]
    return [candidate for _, _, candidate in scored[:n]]


def did_you_mean(word: str, candidates: Iterable[str], *, quote: bool = True) -> str:
    """``"did you mean 'a' or 'b'?"`` for the close matches of ``word``, or ``""`` if none.

    Args:
        word: the name typed.
        candidates: the valid names.
        quote: write the matches with ``repr`` (``'resnet18'``); ``False`` for flags
            (``--first-filter-size``).
    """
    close = close_matches(word, candidates)
    if not close:
        return ""
    shown = [repr(c) if quote else c for c in close]
    return f"did you mean {' or '.join(shown)}?"
