"""The "did you mean" of every name check (perturbnn._suggest): close names or none."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perturbnn import list_models
from perturbnn._suggest import close_matches, did_you_mean, edit_distance


def reference_distance(a: str, b: str) -> int:
    """Optimal string alignment distance, straight from its recursive definition."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        best = min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
        if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
            best = min(best, d(i - 2, j - 2) + 1)
        return best

    return d(len(a), len(b))


@given(st.text("abc-_", max_size=8), st.text("abc-_", max_size=8))
def test_edit_distance_matches_the_recursive_definition(a: str, b: str) -> None:
    assert edit_distance(a, b) == reference_distance(a, b)
    assert edit_distance(b, a) == edit_distance(a, b)


def test_edit_distance_counts_a_swap_as_one_edit() -> None:
    assert edit_distance("rleu", "relu") == 1
    assert edit_distance("", "abc") == 3 and edit_distance("same", "same") == 0


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("resnet19", ["resnet18"]),
        ("perturb-resnet18", ["perturb_resnet18"]),  # - for _: that name only
        ("PERTURB_RESNET18", ["perturb_resnet18"]),
        ("lenet5", ["lenet"]),
        ("noiseresnet", ["noiseresnet18", "noiseresnet34", "noiseresnet50"]),  # a prefix
        ("vgg16", []),
        ("pnn-nonexistent", []),
        ("", []),
    ],
)
def test_close_matches_of_model_names(typed: str, expected: list[str]) -> None:
    assert close_matches(typed, list_models()) == expected


def test_flags_compare_without_dashes_and_underscores() -> None:
    flags = ["--first-filter-size", "--filter-size", "--nepochs"]
    assert close_matches("--first_filter_size", flags) == ["--first-filter-size"]
    assert close_matches("--first-filter", flags) == ["--first-filter-size"]
    assert close_matches("--nepoch", flags) == ["--nepochs"]
    assert close_matches("--x", flags) == []


def test_did_you_mean_wording() -> None:
    assert did_you_mean("basline", ["baseline", "original"]) == "did you mean 'baseline'?"
    assert did_you_mean("--nepoch", ["--nepochs"], quote=False) == "did you mean --nepochs?"
    assert did_you_mean("zzz", ["baseline"]) == ""


@given(st.text(max_size=12), st.lists(st.text(max_size=12), max_size=6))
def test_matches_are_distinct_candidates_at_most_three(typed: str, candidates: list[str]) -> None:
    found = close_matches(typed, candidates)
    assert len(found) <= 3 and len(set(found)) == len(found)
    assert all(c in candidates for c in found)
