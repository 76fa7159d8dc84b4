"""The box-aware head (core.training.boxed_head): it learns where the finding is from its boxes,
and the served model's Grad-CAM is the map of its per-cell evidence."""

from __future__ import annotations

import numpy as np
import pytest

from core.training.boxed_head import BoxedHeadConfig, HeadWeights, box_masks, build_boxed_model, train_head
from tests.core.conftest import SHARED

WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"


def test_a_box_marks_the_cells_it_covers_and_mirrors_with_the_film() -> None:
    masks = box_masks([[(0.0, 0.0, 0.25, 0.25)], [], [(0.5, 0.5, 0.55, 0.55)]], (4, 4))
    assert masks[0].sum() == 1 and masks[0][0, 0]
    assert not masks[1].any()  # a film without a box takes no part in the box term
    assert masks[2].sum() >= 1 and masks[2][2, 2]  # a box smaller than a cell marks its cell
    mirrored = box_masks([[(0.0, 0.0, 0.25, 0.25)]], (4, 4), flip=True)
    assert mirrored[0][0, 3] and mirrored[0].sum() == 1


def test_strict_masks_keep_only_cells_whose_centre_the_pointing_game_would_score() -> None:
    # Cell centres of a 4x4 grid sit at 0.125, 0.375, 0.625, 0.875.
    box = (0.2, 0.2, 0.45, 0.45)
    assert box_masks([[box]], (4, 4))[0].sum() == 4  # it touches four cells...
    strict = box_masks([[box], [(0.5, 0.5, 0.55, 0.55)]], (4, 4), strict=True)
    assert strict[0].sum() == 1 and strict[0][1, 1]  # ...but holds one cell's centre
    assert strict[1].sum() == 1 and strict[1][2, 2]  # no centre inside: the cell of its own centre
    assert box_masks([[box]], (4, 4), flip=True, strict=True)[0][1, 2]


def _films(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps (n, 6, 6, 8): positives carry a 'lesion' pattern in one random cell, their box."""
    x = rng.normal(0, 1, (n, 6, 6, 8)).astype(np.float16)
    y = (np.arange(n) % 2).astype(np.int64)
    masks = np.zeros((n, 6, 6), bool)
    for i in np.nonzero(y)[0]:
        r, c = rng.integers(0, 6, 2)
        x[i, r, c, :4] += 4.0
        masks[i, r, c] = True
    return x, y, masks


def test_the_head_learns_to_point_at_the_boxed_cell() -> None:
    rng = np.random.default_rng(0)
    train, val = _films(300, rng), _films(60, rng)
    config = BoxedHeadConfig(units=16, epochs=25, batch_size=32, lr=1e-2, dropout=0.0)
    weights, history = train_head(*train, *val, config=config, log=lambda _m: None)
    best = max(history, key=lambda h: h["score"])
    assert best["auc"] > 0.9 and best["pointing"] > 0.9, best
    # The folded weights give the same per-cell logits as training saw: the peak is the box.
    x, y, masks = val
    h = np.maximum(x.astype(np.float32) @ weights.kernel + weights.bias, 0)
    cells = h @ weights.v + weights.b
    positives = np.nonzero(y)[0]
    hits = [masks[i].reshape(-1)[cells[i].reshape(-1).argmax()] for i in positives]
    assert np.mean(hits) > 0.9


@pytest.mark.slow
def test_the_served_models_gradcam_is_its_cell_evidence() -> None:
    if not WEIGHTS.is_file():
        pytest.skip("../shared/weights (MobileNetV2 ImageNet) is absent")
    from core.gradcam import GradCam

    rng = np.random.default_rng(1)
    units = 8
    weights = HeadWeights(
        kernel=rng.normal(0, 0.05, (576, units)).astype(np.float32),
        bias=np.zeros(units, np.float32),
        v=np.abs(rng.normal(0, 1, units)).astype(np.float32),  # every cell adds evidence
        b=-0.5,
        pooled_mean=np.zeros(units, np.float32),
    )
    model = build_boxed_model((96, 96), WEIGHTS, weights)
    images = rng.uniform(0, 1, (2, 96, 96, 3)).astype(np.float32)
    trunk = model.get_layer("mobilenetv2")
    maps = np.asarray(trunk(model.get_layer("to_minus1_1")(images), training=False))
    cells = np.maximum(maps @ weights.kernel + weights.bias, 0) @ weights.v + weights.b
    expected = 1 / (1 + np.exp(-cells.mean(axis=(1, 2))))
    result = GradCam(model, layer="cell_dense", position_reference=False)(images)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-4, atol=1e-5)
    assert result.methods == ("gradcam", "gradcam")
    cell = 96 // cells.shape[1]
    for i in range(2):
        # The map at each cell's centre is that cell's evidence, min-max scaled.
        at_centres = result.heatmaps[i][cell // 2 :: cell, cell // 2 :: cell]
        evidence = cells[i] - weights.b
        scaled = (evidence - evidence.min()) / (evidence.max() - evidence.min())
        assert np.corrcoef(at_centres.ravel(), scaled.ravel())[0, 1] > 0.98


@pytest.mark.slow
def test_with_a_blanked_border_nothing_written_in_the_border_changes_the_answer() -> None:
    """A side marker or text in the outer 10% of the film cannot move the probability."""
    if not WEIGHTS.is_file():
        pytest.skip("../shared/weights (MobileNetV2 ImageNet) is absent")
    rng = np.random.default_rng(2)
    weights = HeadWeights(
        kernel=rng.normal(0, 0.05, (576, 8)).astype(np.float32),
        bias=np.zeros(8, np.float32),
        v=rng.normal(0, 1, 8).astype(np.float32),
        b=0.0,
        pooled_mean=np.zeros(8, np.float32),
    )
    blanked = build_boxed_model((96, 96), WEIGHTS, weights, border=0.1)
    plain = build_boxed_model((96, 96), WEIGHTS, weights)
    film = rng.uniform(0.2, 0.8, (1, 96, 96, 3)).astype(np.float32)
    marked = film.copy()
    marked[:, 2:9, 2:30, :] = 1.0  # a bright "R" marker and text in the top-left corner
    assert float(blanked(marked)[0, 0]) == pytest.approx(float(blanked(film)[0, 0]), abs=1e-6)
    assert abs(float(plain(marked)[0, 0]) - float(plain(film)[0, 0])) > 1e-4  # it would have
