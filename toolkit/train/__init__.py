"""Train: fine-tune a COCO-pretrained detector for pedestrians and stop signs without forgetting.

Entry point: ``train(recipe(**fields), out_dir, mirror)`` -> ``TrainResult`` (``edgesight train``).

- ``config``: ``TrainConfig`` (what the user writes) and each architecture's recipe defaults;
- ``loop``: the epoch loop: data, student and teacher, optimiser, validation, checkpoints;
- ``dataset``: samples placed into the model input as at inference, then augmented;
- ``distill``: the frozen COCO teacher's class rows and pseudo-labels;
- ``loss``: SimOTA assignment, box/objectness/class losses and distillation.
"""

from toolkit.train.config import RECIPES, TrainConfig, TrainResult, recipe
from toolkit.train.loop import train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "recipe", "train"]
