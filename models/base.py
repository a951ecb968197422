"""What every architecture in ``models/`` provides, and the pretrained-weights record.

A model is an ``nn.Module`` with:

- ``spec`` (``devices.types.ModelSpec``): input preprocessing, decode rule and labels;
- ``logits(x)``: pre-activation output, what the training loss consumes;
- ``forward(x)``: the raw output contract that ONNX/TFLite exports carry and ``devices.processing``
  decodes (``activate(logits(x))``).

The preprocessing travels with the weights record, as torchvision's ``Weights`` and timm's
``PretrainedCfg`` do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from devices.errors import ConfigError
from devices.types import DecodeSpec, InputSpec, ModelSpec
from models.hub import RemoteFile

if TYPE_CHECKING:  # for the annotation only: importing this module stays cheap (the registry, the CLI)
    import torch

#: The task's classes, in output order, and the COCO-80 row each is initialised from.
TARGET_CLASSES: tuple[str, ...] = ("pedestrian", "stop_sign")
COCO_ROWS: dict[str, int] = {"pedestrian": 0, "stop_sign": 11}

COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class PretrainedWeights:
    """A pretrained file and everything needed to use it correctly.

    Attributes:
        name: Identifier, e.g. ``yolox-nano-coco``.
        file: Upstream location, sha256 and mirror path of the weights.
        license: SPDX identifier of the weights' licence.
        license_file: Upstream licence text, shipped beside any redistributed derivative.
        license_url: Where the licence text is upstream, when there is no pinned ``license_file``.
        license_notice: Shipped as ``LICENSE`` instead when there is no pinned ``license_file``: who
            licensed the weights under which licence (the weights' source is appended).
        categories: Class names of the pretrained head, in output order.
        input: Preprocessing the weights were trained with.
        decode: Output decode rule of the pretrained head.
        source_note: Where the file really comes from, as recorded when mirrored.
    """

    name: str
    file: RemoteFile
    license: str
    license_file: RemoteFile | None
    categories: tuple[str, ...]
    input: InputSpec
    decode: DecodeSpec
    source_note: str = ""
    license_url: str = ""
    license_notice: str = ""


def model_spec(model: torch.nn.Module) -> ModelSpec:
    """The ``spec`` of a network from ``models/``, typed.

    Every architecture here sets ``spec`` in its constructor, but ``nn.Module`` types any attribute it does not
    declare as a tensor or a submodule; a function that takes any of them reads the spec through here.
    """
    return cast(ModelSpec, model.spec)


def at_input_size(spec: ModelSpec, size: int) -> ModelSpec:
    """``spec`` for a square ``size`` x ``size`` input (both architectures are fully convolutional).

    YOLOX boxes are in grid strides, so they hold at any size. FastestDet's width and height terms are
    fractions of the input it learned at; the returned spec keeps that size as ``decode.size_basis``.
    Without it, the pretrained FastestDet run at 416 draws every box 18 % too large (docs/training.md, "Input size").

    Raises:
        ConfigError: ``size`` is not a positive multiple of 32 (the coarsest feature stride).
    """
    if size < 32 or size % 32:
        raise ConfigError(f"input size {size} is not a multiple of 32", "use e.g. 320, 352, 416, 448 or 512")
    decode = spec.decode
    if decode.kind == "fastestdet" and decode.size_basis is None:
        if spec.input.width != spec.input.height:
            raise ConfigError(f"FastestDet learned at {spec.input.width}x{spec.input.height}", "keep that size")
        decode = dataclasses.replace(decode, size_basis=spec.input.width)
    if decode.size_basis == size:
        decode = dataclasses.replace(decode, size_basis=None)
    return dataclasses.replace(
        spec, input=dataclasses.replace(spec.input, width=size, height=size), decode=decode
    )
