"""`python manage.py analyze` as a user runs it: JSON on stdout, an overlay PNG, exit 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.registry import sha256_file
from tests.core.conftest import shared_dicom
from tests.core.tiny_models import SIZE, make_blob_images

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "condition",
    "probability",
    "positive",
    "threshold",
    "model_id",
    "architecture",
    "is_placeholder",
    "placeholder_reason",
    "gradcam_method",
    "gradcam_layer",
}


def run_analyze(*args: str, registry: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RADTRIAGE_REGISTRY": str(registry), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "manage.py", "analyze", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def registry(blob_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    blob_model.save(folder / "blob.keras")
    entry = {
        "id": "blob-v1",
        "condition": "fracture",
        "architecture": "custom",
        "input_size": [SIZE, SIZE],
        "class_labels": ["no blob", "blob"],
        "threshold": 0.5,
        "artifact": "blob.keras",
        "sha256": sha256_file(folder / "blob.keras"),
    }
    path = folder / "registry.json"
    path.write_text(json.dumps({"models": [entry], "active_models": {"fracture": "blob-v1"}}))
    return path


def test_it_prints_the_result_and_writes_an_overlay_at_full_resolution(registry, tmp_path):
    data = make_blob_images(2, seed=11)
    image = cv2.resize((data.images[1, :, :, 0] * 255).astype(np.uint8), (320, 240))
    cv2.imwrite(str(tmp_path / "blob.png"), image)
    out = tmp_path / "overlay.png"
    result = run_analyze(
        str(tmp_path / "blob.png"),
        "--condition",
        "fracture",
        "--out",
        str(out),
        "--alpha",
        "0.6",
        registry=registry,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= KEYS
    assert report["model_id"] == "blob-v1" and report["is_placeholder"] is False
    assert report["positive"] is True and report["probability"] > 0.5
    assert report["gradcam_method"] == "gradcam"
    assert report["gradcam_layer"] == "tiny_backbone/out_relu"  # what the head pools
    overlay = cv2.imread(str(out))
    assert overlay.shape == (240, 320, 3)


def test_a_placeholder_result_is_flagged_on_stdout_and_stderr(registry, tmp_path):
    result = run_analyze(str(shared_dicom("nih_dx_test1.dcm")), "--condition", "pneumonia", registry=registry)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["is_placeholder"] is True
    assert "no active model" in report["placeholder_reason"].lower()
    assert "PLACEHOLDER MODEL" in result.stderr


def test_a_bad_file_prints_the_clear_error_and_exits_2(registry, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an x-ray\n" * 10)
    result = run_analyze(str(bad), "--condition", "pneumonia", registry=registry)
    assert result.returncode == 2
    assert "not an X-ray image RadTriage can read" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_knee_film_is_refused_for_a_chest_condition(registry):
    result = run_analyze(str(shared_dicom("RG3_J2KR.dcm")), "--condition", "pneumonia", registry=registry)
    assert result.returncode == 2 and "EXTREMITY" in result.stderr


def test_several_files_in_jsonl_give_a_line_each_and_garbage_gets_its_error(registry, tmp_path):
    data = make_blob_images(4, seed=12)
    paths = []
    for i in range(3):
        path = tmp_path / f"film-{i}.png"
        cv2.imwrite(str(path), cv2.resize((data.images[i, :, :, 0] * 255).astype(np.uint8), (200, 160)))
        paths.append(str(path))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00garbage" * 50)
    result = run_analyze(
        paths[0], str(garbage), *paths[1:], "--condition", "fracture", "--jsonl", registry=registry
    )

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [paths[0], str(garbage), *paths[1:]]
    bad = lines[1]
    assert bad["positive"] is False and "error" in bad and "probability" not in bad
    for line in (lines[0], *lines[2:]):
        assert set(line) >= KEYS | {"applicable", "not_applicable_reason", "heatmap_peak"}
        assert line["model_id"] == "blob-v1" and "error" not in line
        x, y = line["heatmap_peak"]
        assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
    assert "error" in result.stderr and "garbage.dcm" in result.stderr


def test_jsonl_exits_2_only_when_no_file_could_be_analysed(registry, tmp_path):
    files = []
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image at all")
        files.append(str(tmp_path / name))
    result = run_analyze(*files, "--condition", "fracture", "--jsonl", registry=registry)

    assert result.returncode == 2
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == files
    assert all(line["error"] and line["positive"] is False for line in lines)


def test_out_is_refused_with_several_files(registry, tmp_path):
    result = run_analyze(
        "a.png", "b.png", "--condition", "fracture", "--out", str(tmp_path / "o.png"), registry=registry
    )
    assert result.returncode == 2 and "exactly one FILE" in result.stderr
