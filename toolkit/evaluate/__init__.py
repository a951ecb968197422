"""Evaluate: AP of any detector on a COCO json, and the models it is compared with.

Entry point: ``evaluate(detector, coco_json, images_dir, labels)`` -> ``EvalResult`` (``edgesight eval``).

- ``coco``: COCO-standard evaluation (pycocotools), category matching by name, PR curves;
- ``results``: ``EvalResult`` / ``ClassResult``, what an evaluation measured;
- ``detector``: ``load_detector``, what a MODEL_REF names (bundle, checkpoint, model name, hog);
- ``torch_detector``: the PyTorch model as a detector (the workstation install);
- ``predict``: annotated copies of photos (``edgesight predict``);
- ``bench``: size, latency and AP of bundles, peers and HOG side by side (``edgesight bench``); ``bench_report``
  its table and files;
- ``peers``: stock COCO detectors (YOLOX-Nano, NanoDet-m, SSD MobileNetV2) as baselines;
- ``hog``: OpenCV's HOG people detector, the classical floor.

Importing this package loads neither torch nor the peers: ``edgesight eval`` of a bundle runs on the device.
"""

from toolkit.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate, match_categories
from toolkit.evaluate.results import ClassResult, EvalResult

__all__ = ["EVAL_SCORE_THRESHOLD", "ClassResult", "EvalResult", "evaluate", "match_categories"]
