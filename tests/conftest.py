"""Shared test settings: single-threaded torch, hypothesis profiles ("ci" default, "thorough")."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("PERTURBNN_TEST_THREADS", "1")))

# Test-only switch for mutation testing (docs/testing.md): $PERTURBNN_TEST_COMPILE_BACKEND, by
# default "aot_eager" while mutmut runs the tests ($MUTANT_UNDER_TEST is set), makes every
# torch.compile here use that backend. "aot_eager" still traces with TorchDynamo and splits
# forward and backward with AOTAutograd, so the Python around the compiled kernel (the
# dispatch, the blocks, the caches, the fallback) runs as usual, without inductor's C++
# compilations: seconds per mutant instead of minutes. Unset (CI, users): inductor.
COMPILE_BACKEND = os.environ.get("PERTURBNN_TEST_COMPILE_BACKEND") or (
    "aot_eager" if "MUTANT_UNDER_TEST" in os.environ else ""
)
if COMPILE_BACKEND:
    torch.compile = functools.partial(torch.compile, backend=COMPILE_BACKEND)  # type: ignore[assignment]

# Two hypothesis profiles, chosen by $HYPOTHESIS_PROFILE:
# - "ci" (default): few, derandomized examples, so every run draws the same cases. The branches
#   that matter are pinned by explicit parametrization or @example in the tests themselves, so
#   this profile's random search only adds cases on top of them.
# - "thorough": many fresh random examples each run (no derandomization, no deadline), for a
#   deeper search before a release: HYPOTHESIS_PROFILE=thorough python -m pytest -q
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
settings.register_profile("dev", max_examples=100, deadline=None)  # an older name, kept
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Multiplier of the per-test example counts (``max_examples=scaled(n)``) under "thorough".
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def scaled(examples: int) -> int:
    """A test's own example count, ten times larger under the "thorough" profile."""
    return examples * 10 if THOROUGH else examples


def shared_data_dir() -> Path:
    """The offline data sets: ``$PERTURBNN_DATA_DIR`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("PERTURBNN_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def snapshot(model: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """A module's repr and a copy of its state, to check later that nothing changed it."""
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model: torch.nn.Module, snap: tuple[str, dict[str, torch.Tensor]]) -> None:
    """Assert ``model`` still has the repr and state :func:`snapshot` recorded."""
    text, state = snap
    assert repr(model) == text
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


@pytest.fixture(autouse=True)
def _drop_stdout_log_handler() -> Iterator[None]:
    """Remove the handler ``log_to_stdout`` adds when a test runs a command in this process.

    The handler holds the ``sys.stdout`` of the test that ran the command (pytest's capture,
    closed afterwards); left in place, a later test's log lines would go to a closed stream.
    """
    yield
    package_logger = logging.getLogger("perturbnn")
    for handler in list(package_logger.handlers):
        if getattr(handler, "_perturbnn_stdout", False):
            package_logger.removeHandler(handler)
    package_logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "cifar10").is_dir():
        pytest.skip(f"offline data sets not found at {path} (set PERTURBNN_DATA_DIR)")
    return path
