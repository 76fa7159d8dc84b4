"""A registered model's calibrated scores on its validation and test splits, kept beside it.

`models/<id>/scores.json` is the reference the rest of the product reads: the validation ROC
for a site's operating point (core.training.operating_points) and the validation score
distribution for drift monitoring. Its format is fixed:

    {"model_id": str, "sha256": str (of the artifact the scores were computed with),
     "computed_at": ISO 8601 UTC,
     "splits": {"val":  {"scores": [calibrated probability, 4 decimals], "labels": [0 | 1]},
                "test": {"scores": [...], "labels": [...]}}}

The scores come through the serving path, as core.training.model_evaluation: the
ModelManager (checksum check, load, the registry's calibration) and serve-time decoding and
resizing (core.training.data), so they are the probabilities a radiologist's results would
carry. Reading the file needs numpy only (no TensorFlow).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import RegistryError
from core.registry import ModelEntry, Registry, write_json_atomic

SCORES_FILE = "scores.json"
SPLITS = ("val", "test")
DECIMALS = 4


@dataclass(frozen=True)
class SplitScores:
    """One split of a scores.json: labels int64 (n,) in {0, 1}, scores float64 (n,)."""

    labels: np.ndarray
    scores: np.ndarray

    @property
    def n(self) -> int:
        return int(self.labels.size)


def scores_path(registry: Registry, entry: ModelEntry) -> Path:
    """models/<id>/scores.json beside the registry (where a trained model's artifact, card and
    metrics are), whatever folder its artifact is in."""
    return registry.path.parent / "models" / entry.id / SCORES_FILE


def compute_split_scores(
    *,
    registry_path: str | Path,
    data: str | Path,
    model_id: str | None = None,
    condition: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run a registered model (or a condition's active one) through the serving path on the
    val and test splits of `data` (<split>/<negative|positive>/) -> the scores.json document."""
    from core.model_manager import ModelManager
    from core.preprocessing import to_model_input
    from core.training.data import load_arrays, samples_from_folder

    loaded = ModelManager(registry_path).get(condition=condition, model_id=model_id)
    if loaded.is_placeholder:
        raise RuntimeError(f"No real model to score: {loaded.placeholder_reason}")
    splits: dict[str, dict[str, list[Any]]] = {}
    for split in SPLITS:
        samples = samples_from_folder(data, splits=[split])
        if not samples:
            raise FileNotFoundError(f"No {split} images under {data} (<split>/<negative|positive>/).")
        arrays = load_arrays(samples, input_size=loaded.input_size, cache_dir=cache_dir)
        probs = np.concatenate(
            [loaded.predict(to_model_input(arrays.x[i : i + 64])) for i in range(0, arrays.n, 64)]
        )
        splits[split] = {
            "scores": [round(float(p), DECIMALS) for p in probs],
            "labels": [int(y) for y in arrays.y],
        }
    return {
        "model_id": loaded.model_id,
        "sha256": loaded.sha256,
        "computed_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "splits": splits,
    }


def write_split_scores(registry: Registry, document: dict[str, Any]) -> Path:
    """Write `document` (compute_split_scores' output) as its model's scores.json."""
    problems = validate_scores(document)
    if problems:
        raise ValueError("Refusing to write invalid scores:\n- " + "\n- ".join(problems))
    path = scores_path(registry, registry.entry(document["model_id"]))
    write_json_atomic(path, document)
    return path


def read_split_scores(registry: Registry, entry: ModelEntry) -> dict[str, SplitScores]:
    """The model's scores.json as split -> SplitScores. RegistryError (saying what to run)
    when it is missing, malformed, or computed with another artifact than the registered one."""
    path = scores_path(registry, entry)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(
            f"No validation scores for {entry.id} ({path}): run `manage.py model_scores --model {entry.id}`."
        ) from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"The scores file {path} cannot be read ({exc}).") from None
    problems = validate_scores(document)
    if problems:
        raise RegistryError(f"The scores file {path} is invalid:\n- " + "\n- ".join(problems))
    if document["model_id"] != entry.id or (entry.sha256 and document["sha256"] != entry.sha256):
        raise RegistryError(
            f"The scores in {path} were computed for {document['model_id']} "
            f"({str(document['sha256'])[:12]}...), not the registered {entry.id} "
            f"({str(entry.sha256)[:12]}...): run `manage.py model_scores --model {entry.id}` again."
        )
    return {
        split: SplitScores(
            labels=np.asarray(document["splits"][split]["labels"], dtype=np.int64),
            scores=np.asarray(document["splits"][split]["scores"], dtype=np.float64),
        )
        for split in SPLITS
    }


def validate_scores(document: Any) -> list[str]:
    """Every problem of a scores.json document, each a sentence."""
    if not isinstance(document, dict):
        return ["a scores file must be a JSON object"]
    problems = [
        f"'{key}' must be a string"
        for key in ("model_id", "sha256")
        if not isinstance(document.get(key), str)
    ]
    splits = document.get("splits")
    if not isinstance(splits, dict):
        return [*problems, "'splits' must map val and test to scores and labels"]
    for split in SPLITS:
        part = splits.get(split)
        if not isinstance(part, dict):
            problems.append(f"splits.{split} is missing")
            continue
        scores, labels = part.get("scores"), part.get("labels")
        if not isinstance(scores, list) or not isinstance(labels, list) or len(scores) != len(labels):
            problems.append(f"splits.{split}: 'scores' and 'labels' must be lists of one length")
        elif any(y not in (0, 1) for y in labels):
            problems.append(f"splits.{split}: labels must be 0 or 1")
        elif any(not isinstance(s, int | float) or not 0.0 <= s <= 1.0 for s in scores):
            problems.append(f"splits.{split}: scores must be probabilities in [0, 1]")
    return problems
