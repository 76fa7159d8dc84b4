"""What a training run is asked to do: the protocols, the recorded populations, TrainConfig and
the stage schedule (no TensorFlow)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.architectures import ARCHITECTURES
from core.conditions import get_condition
from core.training.evaluation import DEFAULT_MIN_SENSITIVITY

CLASS_LABELS = {
    "pneumonia": ["no pneumonia", "pneumonia"],
    "cardiomegaly": ["no cardiomegaly", "cardiomegaly"],
    "fracture": ["no fracture", "fracture"],
    "knee_osteoarthritis": ["no osteoarthritis (KL 0-1)", "osteoarthritis (KL >= 2)"],
    "knee_osteoporosis": ["no osteoporosis", "osteoporosis"],
}

# The paper's two protocols, plus the house fine-tuning recipe used for the delivered fast
# models. Every number can be overridden from the command line; the registry records what ran.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Transfer learning: backbone frozen, head trained.
    "quick": {
        "epochs": 5,
        "batch_size": 25,
        "lr": 1e-3,
        "schedule": "frozen",
        "patience_lr": 2,
        "patience_stop": 3,
    },
    # Gradual unfreezing: head, then the top third, two thirds, all of the backbone.
    "intensive": {
        "epochs": 50,
        "batch_size": 16,
        "lr": 1e-5,
        "schedule": "gradual",
        "stage_epochs": 2,
        "patience_lr": 3,
        "patience_stop": 8,
    },
    # Head warm-up at 1e-3 for `warmup_epochs`, then the whole backbone at `lr`.
    "finetune": {
        "epochs": 12,
        "batch_size": 32,
        "lr": 1e-4,
        "schedule": "warmup",
        "warmup_epochs": 1,
        "patience_lr": 2,
        "patience_stop": 4,
    },
}
HEAD_LR = 1e-3
MIN_CALIBRATION_PER_CLASS = 10
# One-sided confidence of the exact lower bound of validation sensitivity that must reach the
# target: the margin that keeps the promised sensitivity on test (core.training.evaluation).
THRESHOLD_CONFIDENCE = 0.95
# A test set this small cannot validate a model: it is registered experimental.
MIN_TEST_POSITIVES = 30
MIN_TEST_IMAGES = 100

# Who each condition's training data came from: the integrator's applicability check and the
# model cards read it from the registry entry.
POPULATIONS: dict[str, dict[str, Any]] = {
    "pneumonia": {
        "region": "chest",
        "image_kind": "full film",
        "views": ["AP/PA frontal"],
        "age_group": "children",
        "age_range_years": [1, 5],
        "sources": ["Kermany et al. 2018, Guangzhou Women and Children's Medical Center"],
        "recogniser_classes": ["chest_child"],
        "description": "Children's frontal chest films (Guangzhou, ages 1-5)",
    },
    "cardiomegaly": {
        "region": "chest",
        "image_kind": "full film",
        "views": ["PA/AP frontal"],
        "age_group": "adults",
        "age_range_years": None,
        "sources": ["NIH ChestX-ray14 (Wang et al. 2017)"],
        "recogniser_classes": ["chest_adult"],
        "description": "Adults' frontal chest films (NIH Clinical Center, ChestX-ray14)",
    },
    "fracture": {
        "region": "limb",
        "image_kind": "full film",
        "views": ["frontal", "lateral", "oblique"],
        "age_group": "both",
        "age_range_years": None,
        "sources": [
            "FracAtlas (Abedeen et al. 2023): hand, leg, hip, shoulder",
            "Kaggle 'bone fracture detection using X-rays': upper limb",
        ],
        "recogniser_classes": ["limb"],
        "description": "Limb radiographs of adults and children (FracAtlas hand, leg, hip and "
        "shoulder films from Bangladesh; Kaggle upper-limb films)",
    },
    "knee_osteoarthritis": {
        "region": "knee",
        "image_kind": "joint crop (CLAHE)",
        "views": ["PA fixed-flexion"],
        "age_group": "adults",
        "age_range_years": [45, 79],
        "sources": ["Osteoarthritis Initiative, crops by Chen et al. 2019"],
        "recogniser_classes": ["knee_crop"],
        "description": "Adults' knee joint crops, contrast-equalised (CLAHE), from the "
        "Osteoarthritis Initiative (ages 45-79)",
    },
    "knee_osteoporosis": {
        "region": "knee",
        "image_kind": "full film",
        "views": ["AP bilateral"],
        "age_group": "adults",
        "age_range_years": None,
        "sources": ["Wani & Arora knee X-ray database with DXA T-scores (Mendeley Data fxjm8fb6mw)"],
        "recogniser_classes": ["knee_film"],
        "description": "Adults' bilateral AP knee films with a DXA T-score (Wani & Arora, India)",
    },
}


@dataclass
class TrainConfig:
    condition: str
    data: str
    architecture: str = "mobilenetv2"
    model_id: str | None = None
    input_size: tuple[int, int] | None = None
    protocol: str = "quick"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_epochs: int | None = None
    seed: int = 42
    imagenet_weights: str | None = None
    augment: bool = True
    horizontal_flip: bool | None = None  # None: the condition's allow_horizontal_flip
    rotation_degrees: float = 20.0
    brightness: float = 0.10
    contrast: float = 0.20
    zoom: float = 0.10
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.3  # carved from train by group when the data has no val split
    max_train: int | None = None  # stratified random subset, recorded in the registry
    max_val: int | None = None
    calibration: str = "platt"
    min_sensitivity: float = DEFAULT_MIN_SENSITIVITY
    threshold_confidence: float | None = THRESHOLD_CONFIDENCE
    shortcut_augment: bool = False  # border blanking, pasted markers, centre crops, gamma
    cv_folds: int = 0  # > 1: grouped cross-validation on train+val before the final model
    cv_epochs: int | None = None
    bn_reestimate_images: int = 2048
    dense_units: tuple[int, ...] = (256,)
    dropout: float = 0.3
    threads: int | None = None
    cache_dir: str | None = None
    n_boot: int = 1000
    patience: int | None = None  # EarlyStopping patience (None: the protocol's)
    status: str | None = None  # None: 'validated', or 'experimental' when data are tiny
    experimental_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def resolved(self) -> TrainConfig:
        get_condition(self.condition)
        if self.architecture not in ("mobilenetv2", "densenet121"):
            raise ValueError("architecture must be mobilenetv2 or densenet121")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        p = PROTOCOLS[self.protocol]
        size = tuple(self.input_size or ARCHITECTURES[self.architecture]["input_size"])
        c = TrainConfig(**{**asdict(self), "input_size": (int(size[0]), int(size[1]))})
        c.epochs = int(self.epochs or p["epochs"])
        c.batch_size = int(self.batch_size or p["batch_size"])
        c.lr = float(self.lr or p["lr"])
        c.warmup_epochs = int(
            self.warmup_epochs if self.warmup_epochs is not None else p.get("warmup_epochs", 0)
        )
        if c.horizontal_flip is None:
            c.horizontal_flip = get_condition(self.condition).allow_horizontal_flip
        if c.model_id is None:
            c.model_id = f"{self.condition}-{self.architecture}-{size[0]}-v1"
        return c


@dataclass
class Stage:
    start_epoch: int
    end_epoch: int  # exclusive
    trainable: str  # "head" | "top1/3" | "top2/3" | "all"
    lr: float


def plan_stages(config: TrainConfig, *, pretrained: bool) -> list[Stage]:
    """The protocol's schedule as epoch ranges with what is trainable and at which rate."""
    p = PROTOCOLS[config.protocol]
    epochs, lr = int(config.epochs or 0), float(config.lr or 0)
    if p["schedule"] == "frozen":
        if not pretrained:
            # A frozen random backbone learns nothing: train everything instead (recorded).
            return [Stage(0, epochs, "all", lr)]
        return [Stage(0, epochs, "head", lr)]
    if p["schedule"] == "warmup":
        warm = min(int(config.warmup_epochs or 0), epochs) if pretrained else 0
        stages = [Stage(0, warm, "head", HEAD_LR)] if warm else []
        return stages + [Stage(warm, epochs, "all", lr)] if epochs > warm else stages
    # gradual unfreezing
    if not pretrained:
        return [Stage(0, epochs, "all", lr)]
    k = int(p.get("stage_epochs", 2))
    stages, start = [], 0
    for trainable in ("head", "top1/3", "top2/3"):
        end = min(start + k, epochs)
        if end > start:
            stages.append(Stage(start, end, trainable, lr))
        start = end
    if epochs > start:
        stages.append(Stage(start, epochs, "all", lr))
    return stages


def replace_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    return TrainConfig(**{**asdict(config), "epochs": epochs})
