"""Train: fine-tune a COCO-pretrained detector for pedestrians and stop signs, so that it pays off on unseen photos.

Entry point: ``train(recipe(**fields), out_dir, mirror)`` -> ``TrainResult`` (``edgesight train``).

- ``config``: ``TrainConfig`` (what the user writes) and each architecture's recipe defaults;
- ``loop``: the run as named steps: data, what trains, models, epochs, validation, input size, report;
- ``select``: which epoch and which input size a run keeps, decided per validation source and class;
- ``report``: the summary ``edgesight train`` prints;
- ``dataset``: samples placed into the model input as at inference, then augmented, and each epoch's photos;
- ``distill``: the frozen COCO teacher's class rows, and the moving average of the student;
- ``loss``: SimOTA assignment, box/objectness/class losses and distillation.
"""

from toolkit.train.config import RECIPES, TrainConfig, TrainResult, recipe
from toolkit.train.loop import train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "recipe", "train"]
