"""Where tests keep what a person may want to look at after a run (screenshots, PDF pages):
RADTRIAGE_TEST_OUTPUT, else var/test-output in the repository (ignored by git)."""

from __future__ import annotations

import os
from pathlib import Path

TEST_OUTPUT = Path(
    os.environ.get("RADTRIAGE_TEST_OUTPUT", Path(__file__).resolve().parents[1] / "var" / "test-output")
)


def output_folder(name: str) -> Path:
    folder = TEST_OUTPUT / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
