"""The fine-tuning recipe the user writes (``TrainConfig``), each architecture's defaults, and the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devices.errors import ConfigError
from models.registry import list_models, model_entry
from toolkit.data.sets import DEFAULT_DATASETS
from toolkit.train.select import SizeChoice

Layers = Literal["auto", "class_rows", "outputs", "head", "neck_and_head"]


class TrainConfig(BaseModel):
    """The fine-tuning recipe. Every field can be set from the CLI or a JSON file (``--config``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("yolox-nano", description="A registered architecture (models.list_models()).")
    imgsz: int | None = Field(None, ge=32, multiple_of=32, description="A fixed square input size, a multiple of 32. "
                              "None: train at the pretrained size and choose among size_candidates afterwards.")
    size_candidates: tuple[int, ...] | None = Field(
        None, description="Input sizes compared after training besides the pretrained one (None: the registry "
        "entry's size_candidates).")
    epochs: int | None = Field(None, ge=1, description="None: as many as min_steps optimiser steps need, so that "
                               "a few dozen photos get more epochs than a few hundred.")
    min_steps: int = Field(120, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    ema_decay: float | None = Field(0.98, gt=0, lt=1, description="Exponential moving average of the trained "
                                    "weights; the average is what is validated and kept (None: off).")
    distill_weight: float = Field(3.0, ge=0)
    box_distill_weight: float = Field(1.0, ge=0, description="Pull the boxes of the classes a photo's labels do "
                                      "not teach toward the teacher's.")
    teacher_box_weight: float = Field(0.0, ge=0, description="Pull every box toward the teacher's where it sees "
                                      "an object of a target class, labelled classes included.")
    train_layers: Layers = Field("auto", description="auto: the head's last box/objectness/class layers when "
                                 "every class has labels in the run, else only the class-score rows of the labelled "
                                 "classes; class_rows; outputs; head: the whole head; neck_and_head: all but the "
                                 "backbone.")
    # The bundled sets teach stop signs only: 134 labelled COCO images cannot teach people better than the
    # 64k-image COCO model did, and training on them lost AP in every variant measured. The user's sets
    # (--data) teach every class they label.
    label_classes: tuple[Literal["pedestrian", "stop_sign"], ...] = ("stop_sign",)
    user_share: float = Field(0.5, gt=0, le=1, description="With --data: the share of each epoch's photos that are "
                              "yours; the rest is a fresh draw of bundled photos.")
    hard_repeat: int = Field(1, ge=1, description="With --data: your training photos where the zero-shot model "
                             "misses a labelled object are drawn this many times an epoch (the others once).")
    one_copy_per_photo: bool = True
    seed: int = 0
    workers: int = Field(0, ge=0)
    validations: int = Field(4, ge=1, description="How many times a run validates (the last epoch always).")
    max_minutes: float | None = Field(15.0, gt=0)
    max_train_images: int | None = Field(None, ge=1)
    max_val_images: int | None = Field(None, ge=1)
    video_frames: int = Field(0, ge=0, description="Unlabelled frames per bundled video (teacher-distilled).")
    protect_classes: bool = Field(True, description="best.pt never has a class below its zero-shot AP on any "
                                  "deciding validation source.")
    datasets: tuple[str, ...] = Field(DEFAULT_DATASETS, description="The bundled sets trained and validated on.")
    data: tuple[str, ...] = Field(
        (),
        description="Your own annotated photos (COCO .json, YOLO or VOC folder; toolkit.data.userdata): every class "
        "they label is learnt from them, and their validation split decides best.pt and the input size.",
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
        if self.train_layers == "class_rows" and model_entry(self.model).class_rows_prefix is None:
            raise ValueError(f"train_layers 'class_rows' needs one sigmoid per class; {self.model}'s registry entry "
                             "names no class-score rows (its classes share a softmax)")
        return self

    @property
    def sizes(self) -> tuple[int, ...]:
        """The input sizes the run measures after training (the pretrained size is added by the run)."""
        if self.imgsz is not None:
            return (self.imgsz,)
        entry = model_entry(self.model)
        return tuple(sorted({entry.weights.input.width, *(self.size_candidates or entry.size_candidates)}))


#: Per-architecture recipe defaults. FastestDet's softmax head forgets pedestrians faster: of the whole-head
#: variants measured before (README history), distillation 100 at lr 1e-4 held its pedestrians best. Its values
#: were not re-measured by source for the output-layer recipe (docs/training.md, "Not measured").
RECIPES: dict[str, dict] = {
    "yolox-nano": {},
    "fastestdet": {"distill_weight": 100.0, "lr": 1e-4},
}

#: Per-architecture defaults on top of RECIPES when the run has your photos (``data``): the whole head trains
#: for 360 steps, with the class distillation at 1 and every box held to the teacher's where it sees an object
#: (the labels teach boxes only where the COCO model sees nothing), and your photos with an object the COCO model
#: misses are drawn 4 times an epoch. On the user-domain experiment (benchmarks/user_domain.py,
#: docs/training.md) the first four gained +1.6 +- 0.9 (Roboflow) and +1.3 +- 0.9 (Kaggle) stop-sign points on
#: the unseen half, where the recipe without them gained -0.5 and +1.0; the hard photos drawn 4 times took
#: Roboflow to +2.0 and +2.3 (two seeds, at 416: the unseen sign backs missed fell from 6 to 2-3) and changed
#: nothing where the COCO model missed nothing (Kaggle). FastestDet keeps its distillation and lr and trains the
#: whole head for 360 steps with the hard photos drawn 4 times: on the three user-domain sources that gained
#: +1.5 (Roboflow) against its output layers' +0.8 and kept the zero-shot weights where those did (Kaggle,
#: coco128 people), for 6 minutes of training instead of 2.
#: Without your photos YOLOX-Nano's set lost people by source (-1.4 points on held-out coco128, where no
#: validation source labels a person; docs/training.md), so there ``auto`` stays.
WITH_DATA: dict[str, dict] = {
    "yolox-nano": {"train_layers": "head", "min_steps": 360, "distill_weight": 1.0, "teacher_box_weight": 1.0,
                   "hard_repeat": 4},
    "fastestdet": {"train_layers": "head", "min_steps": 360, "hard_repeat": 4},
}


def recipe(**fields: object) -> TrainConfig:
    """The default recipe of ``fields["model"]`` (with your photos: ``WITH_DATA`` too) with ``fields`` on top
    (the user's settings win)."""
    model = str(fields.get("model", TrainConfig.model_fields["model"].default))
    defaults = {**RECIPES.get(model, {}), **(WITH_DATA.get(model, {}) if fields.get("data") else {})}
    try:
        return TrainConfig(**{**defaults, **fields})
    except ValidationError as exc:
        problems = "; ".join(
            (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"] for e in exc.errors()
        )
        raise ConfigError(f"invalid training setting: {problems}", "fix that flag or --config field") from None


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        best: best.pt (its weights at its input size).
        best_epoch: The epoch best.pt's weights come from (0: the zero-shot model).
        size: The chosen input size and the figures it was chosen on.
        summary: What summary.json holds: per-source tables, the gains on the user's photos, the history.
        wall_seconds: Wall time of the run.
        stopped_early: Whether ``max_minutes`` ended it.
    """

    best: Path
    best_epoch: int
    size: SizeChoice
    summary: dict
    wall_seconds: float
    stopped_early: bool
