"""Data: annotated photos in, one ``Sample`` record out, and the split training and export share.

Entry point: ``default_splits(mirror, data)`` -- the bundled sets plus the user's own, split into
train and validation by original photo (what ``edgesight train``, ``export`` and ``data`` read).

- ``sample``: the ``Sample`` record, the class map and the box rules every reader applies;
- ``images``: image files, their size from the header, decoding to BGR;
- ``coco``, ``yolo``, ``voc``: one reader per annotation format (and the COCO writer);
- ``sets``: the bundled datasets, where they come from, and the split; ``fetch`` downloads one without a mirror;
- ``userdata``: the user's own set (``train --data PATH``), read by its layout;
- ``videos``: unlabelled video frames for the teacher to label;
- ``report``: what a set holds (``edgesight data``);
- ``clips``: the composed stop-sign clip the demo plays (pan and zoom over validation photos).
"""

from toolkit.data.coco import read_coco, to_coco
from toolkit.data.images import IMAGE_SUFFIXES, image_size, load_image
from toolkit.data.report import data_report, render_report
from toolkit.data.sample import DEFAULT_CLASS_MAP, ClassMap, Sample, samples_sha256
from toolkit.data.sets import DATASETS, default_splits, evenly_spaced, load_dataset, split
from toolkit.data.userdata import read_user_dataset, read_user_datasets
from toolkit.data.voc import read_voc
from toolkit.data.yolo import read_yolo

__all__ = [
    "DATASETS",
    "DEFAULT_CLASS_MAP",
    "IMAGE_SUFFIXES",
    "ClassMap",
    "Sample",
    "data_report",
    "default_splits",
    "evenly_spaced",
    "image_size",
    "load_dataset",
    "load_image",
    "read_coco",
    "read_user_dataset",
    "read_user_datasets",
    "read_voc",
    "read_yolo",
    "render_report",
    "samples_sha256",
    "split",
    "to_coco",
]
