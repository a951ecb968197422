"""The registry of architectures: the one list of models, and what the toolkit needs to know of each.

Each architecture registers its factory beside its network with what the rest of the toolkit must know
about it (timm's rule: the registry is the only list):

- ``weights``: the pretrained record: file, licence, categories, preprocessing and decode rule;
- ``backbone_prefix``: parameter-name prefix of the feature extractor (frozen by default in training);
- ``class_rows_prefix``: parameter-name prefix of the class-score layers, one row per class, when each
  class has its own sigmoid (None when the classes share one softmax, so no row stands alone);
- ``output_prefixes``: the head's last layers (box, objectness, class scores), what training adapts first;
- ``head_prefix``: the whole detection head;
- ``size_candidates``: input sizes a training run compares after training, besides the pretrained size.

The score rule of each decode kind lives once, on the device side (``devices.processing.combine_scores``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devices.errors import ConfigError
from models.base import PretrainedWeights


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: The name users pass (``--model``, ``create_model``).
        factory: Builds the network; takes ``num_classes``, ``pretrained`` and ``mirror``.
        weights: The pretrained record the factory loads.
        backbone_prefix: Parameter-name prefix of the feature extractor.
        class_rows_prefix: Parameter-name prefix of the per-class sigmoid score layers, or None.
        output_prefixes: Parameter-name prefixes of the head's last box, objectness and class layers (empty: not
            declared; training then adapts the whole head).
        head_prefix: Parameter-name prefix of the detection head (empty: everything but the backbone).
        size_candidates: Square input sizes compared after training besides the pretrained one.
    """

    name: str
    factory: Callable[..., Any]
    weights: PretrainedWeights
    backbone_prefix: str
    class_rows_prefix: str | None = None
    output_prefixes: tuple[str, ...] = ()
    head_prefix: str = ""
    size_candidates: tuple[int, ...] = ()


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    weights: PretrainedWeights,
    backbone_prefix: str,
    class_rows_prefix: str | None = None,
    output_prefixes: tuple[str, ...] = (),
    head_prefix: str = "",
    size_candidates: tuple[int, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model factory and its entry under ``name``; refuses duplicates."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MODELS:
            raise ValueError(f"model name '{name}' is already registered by {_MODELS[name].factory.__module__}")
        _MODELS[name] = ModelEntry(name, factory, weights, backbone_prefix, class_rows_prefix, output_prefixes,
                                   head_prefix, size_candidates)
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    _load_builtin()
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        ConfigError: No architecture of that name is registered.
    """
    _load_builtin()
    if name not in _MODELS:
        raise ConfigError(f"unknown model '{name}'", f"choose one of: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model.

    Args:
        name: A name from ``list_models()``.
        **kwargs: Passed to the factory, typically ``num_classes`` (2 for pedestrian/stop_sign, 80 for
            COCO), ``pretrained`` and ``mirror``.
    """
    return model_entry(name).factory(**kwargs)


def _load_builtin() -> None:
    # Importing every module of this package registers its architectures, so a new architecture is a new
    # file here and nothing else; deferred so that importing the registry (and the CLI) stays cheap.
    import models

    for module in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"models.{module.name}")
