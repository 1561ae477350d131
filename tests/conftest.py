"""Shared test settings: single-threaded torch, a hypothesis profile sized for a 2-core CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("PERTURBNN_TEST_THREADS", "1")))

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def shared_data_dir() -> Path:
    """The offline data sets: ``$PERTURBNN_DATA_DIR`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("PERTURBNN_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "cifar10").is_dir():
        pytest.skip(f"offline data sets not found at {path} (set PERTURBNN_DATA_DIR)")
    return path
