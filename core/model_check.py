"""Is a registered model fit to be switched on? Four checks on its artifact, in order, each
stopping the rest when it fails: the file is there, its sha256 matches the registry, Keras
loads it, and it predicts a probability for a probe image of its declared input size.

Run in its own process (`python -m core.model_check REGISTRY MODEL_ID`, JSON on stdout): the
web process that asks (the admin's "activate") never imports TensorFlow.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.errors import RadTriageError
from core.registry import ModelEntry, Registry, sha256_file

CHECKS = ("present", "checksum", "loads", "predicts")


@dataclass(frozen=True)
class CheckStep:
    name: str  # one of CHECKS
    ok: bool
    detail: str


def probe_image(input_size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w): a smooth ramp with a bright disc, deterministic; not an X-ray, only a
    well-formed input of the model's size to see that a forward pass gives a probability."""
    height, width = input_size
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / max(width - 1, 1)) * 160 + 40
    disc = ((yy - height / 2) ** 2 + (xx - width / 3) ** 2) < (min(height, width) / 5) ** 2
    return np.clip(ramp + disc * 60, 0, 255).astype(np.uint8)


def artifact_check(registry: Registry, model_id: str) -> list[CheckStep]:
    """The checks run, in order; the last one failed when any did."""
    entry = registry.entry(model_id)
    path = registry.artifact_path(entry)
    steps: list[CheckStep] = []
    if not path.is_file():
        return [CheckStep("present", False, f"The artifact {entry.artifact} is missing.")]
    steps.append(CheckStep("present", True, f"{entry.artifact} ({path.stat().st_size:,} bytes)"))
    actual = sha256_file(path)
    if not entry.sha256:
        return [
            *steps,
            CheckStep("checksum", False, "The registry records no sha256 for it: it cannot be verified."),
        ]
    if actual != entry.sha256:
        return [
            *steps,
            CheckStep(
                "checksum",
                False,
                f"The file's sha256 {actual[:12]}… differs from the registry's {entry.sha256[:12]}…: "
                "it was changed or corrupted.",
            ),
        ]
    steps.append(CheckStep("checksum", True, f"sha256 {actual[:12]}… matches the registry"))
    try:
        model = _load(path)
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises, the artifact is unusable
        return [*steps, CheckStep("loads", False, f"Keras cannot load it: {type(exc).__name__}: {exc}")]
    steps.append(CheckStep("loads", True, f"Keras model with input {tuple(model.input_shape)}"))
    steps.append(_predicts(model, entry))
    return steps


def _load(path: Path):  # noqa: ANN202 - a keras.Model; keras is imported here only
    import keras

    return keras.models.load_model(path, compile=False)


def _predicts(model, entry: ModelEntry) -> CheckStep:  # noqa: ANN001
    from core.preprocessing import preprocess_gray

    expected = (*entry.input_size, 3)
    if tuple(model.input_shape[1:]) != expected:
        return CheckStep(
            "predicts", False, f"It takes input {tuple(model.input_shape[1:])}, the registry says {expected}."
        )
    batch = preprocess_gray(probe_image(entry.input_size), input_size=entry.input_size)[None]
    try:
        output = np.asarray(model(batch, training=False)).reshape(-1)
    except Exception as exc:  # noqa: BLE001
        return CheckStep("predicts", False, f"The probe image fails: {type(exc).__name__}: {exc}")
    if output.size != 1 or not np.isfinite(output[0]) or not 0.0 <= float(output[0]) <= 1.0:
        return CheckStep(
            "predicts", False, f"The probe image gives {output[:4].tolist()}, not one probability."
        )
    return CheckStep("predicts", True, f"probe image -> probability {float(output[0]):.3f}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m core.model_check REGISTRY MODEL_ID", file=sys.stderr)
        return 2
    try:
        steps = artifact_check(Registry.load(argv[0]), argv[1])
    except RadTriageError as exc:
        steps = [CheckStep("present", False, str(exc))]
    print(json.dumps([asdict(s) for s in steps]))
    return 0 if all(s.ok for s in steps) and len(steps) == len(CHECKS) else 1


if __name__ == "__main__":
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main(sys.argv[1:]))
