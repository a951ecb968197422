"""A small registry of model architectures: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from devices.errors import ConfigError

_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model factory under ``name``; refuses duplicates."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MODELS:
            raise ValueError(f"model name '{name}' is already registered by {_MODELS[name].__module__}")
        _MODELS[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    _load_builtin()
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model.

    Args:
        name: A name from ``list_models()``.
        **kwargs: Passed to the factory, typically ``num_classes`` (2 for pedestrian/stop_sign, 80 for
            COCO), ``pretrained`` and ``mirror``.
    """
    _load_builtin()
    if name not in _MODELS:
        raise ConfigError(f"unknown model '{name}'", f"choose one of: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)


def _load_builtin() -> None:
    # Importing the architecture modules registers them; deferred so that importing the registry is cheap.
    from models import fastestdet, yolox  # noqa: F401
