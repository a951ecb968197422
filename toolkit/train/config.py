"""The fine-tuning recipe the user writes (``TrainConfig``), each architecture's defaults, and the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devices.errors import ConfigError
from models.registry import list_models, model_entry


class TrainConfig(BaseModel):
    """The fine-tuning recipe. Every field can be set from the CLI or a JSON/YAML file."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("yolox-nano", description="A registered architecture (models.list_models()).")
    imgsz: int | None = Field(None, ge=32, multiple_of=32, description="Square input size, a multiple of 32 (None: the "
                              "pretrained size, 416 YOLOX-Nano / 352 FastestDet).")
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    distill_weight: float = Field(3.0, ge=0)
    pseudo_label_score: float = Field(0.5, gt=0, lt=1)
    # Pedestrians learn from the COCO teacher alone by default: 134 labelled COCO images cannot teach
    # people better than the 64k-image COCO model did, and training on them measurably lost AP.
    label_classes: tuple[Literal["pedestrian", "stop_sign"], ...] = ("stop_sign",)
    freeze_backbone: bool = True
    one_copy_per_photo: bool = True
    seed: int = 0
    workers: int = Field(0, ge=0)
    val_every: int = Field(1, ge=1)
    max_minutes: float | None = Field(15.0, gt=0)
    max_train_images: int | None = Field(None, ge=1)
    video_frames: int = Field(0, ge=0, description="Unlabelled frames per bundled video (teacher-labelled).")
    protect_classes: bool = Field(True, description="best.pt never has a class below its zero-shot AP.")
    max_val_images: int | None = Field(None, ge=1)
    data: tuple[str, ...] = Field(
        (),
        description="Your own annotated photos (COCO .json, YOLO or VOC folder; toolkit.data.userdata), trained and "
        "validated beside the bundled sets.",
    )
    label_rows_only: bool = Field(
        False,
        description="Train only the class-score rows of label_classes: every other output (boxes, objectness, "
        "the other classes) stays the pretrained model's exactly. No weight decay (it would shrink the frozen "
        "rows). YOLOX-Nano only.",
    )

    @field_validator("model")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in list_models():
            raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
        return name

    @field_validator("data", mode="before")
    @classmethod
    def _absolute(cls, paths: object) -> object:
        # Absolute, so that best.pt tells `edgesight export` where the photos are from any directory.
        if isinstance(paths, list | tuple):
            return tuple(str(Path(p).expanduser().resolve()) for p in paths)
        return paths

    @model_validator(mode="after")
    def _rows_stand_alone(self) -> TrainConfig:
        if self.label_rows_only and model_entry(self.model).class_rows_prefix is None:
            raise ValueError(
                f"label_rows_only needs one sigmoid per class; {self.model}'s registry entry names no class-score "
                "rows (its classes share a softmax)"
            )
        return self


#: Per-architecture recipe defaults, measured (README "Training recipe"): FastestDet's softmax head forgets
#: pedestrians faster, so it trains slower, longer, under a strong pull toward the teacher (distillation 100,
#: of six 12-epoch variants the one whose pedestrian AP stayed highest; see the README sweep). Both train
#: above their pretrained size: small, distant people gain most (README "Input size"). At 512 every YOLOX-Nano
#: epoch that trained the whole head lost pedestrians, so only its stop-sign score rows learn.
RECIPES: dict[str, dict] = {
    "yolox-nano": {"imgsz": 512, "label_rows_only": True, "lr": 1e-3},
    "fastestdet": {"lr": 1e-4, "distill_weight": 100.0, "epochs": 10, "imgsz": 416},
}


def recipe(**fields: object) -> TrainConfig:
    """The default recipe of ``fields["model"]`` with ``fields`` on top (the user's settings win)."""
    model = fields.get("model", TrainConfig.model_fields["model"].default)
    try:
        return TrainConfig(**{**RECIPES.get(str(model), {}), **fields})
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
        )
        raise ConfigError(f"invalid training setting: {problems}", "fix that flag or --config field") from None


@dataclass(frozen=True)
class TrainResult:
    """What a run produced: the best checkpoint, its validation metrics, and how long it took."""

    best: Path
    best_epoch: int
    metrics: dict
    zero_shot: dict
    zero_shot_native: dict | None
    wall_seconds: float
    stopped_early: bool
