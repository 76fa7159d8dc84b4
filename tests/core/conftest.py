"""Fixtures for core/ tests: generated DICOM/PNG files and a tiny real Keras model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("RADTRIAGE_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
SHARED_DICOM = SHARED / "data" / "dicom"


def shared_dicom(name: str) -> Path:
    path = SHARED_DICOM / name
    if not path.is_file():
        pytest.skip(f"real DICOM {name} not available: ../shared/data/dicom is absent")
    return path


@pytest.fixture(scope="session")
def blob_model():
    """A tiny real CNN (nested backbone + the paper's head) trained for a few seconds to detect a
    bright blob placed at random; returns (model, make_images)."""
    from tests.core.tiny_models import train_blob_model

    return train_blob_model(seed=0)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
