"""Devices, named once: params.yaml's ``device`` values and where a model's weights live."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["resolve", "of", "for_model"]

log = logging.getLogger(__name__)


def resolve(device: Any) -> Any:
    """params.yaml's ``device: auto`` -> "cuda" when CUDA is available, else "cpu"; anything else
    (a name, a torch.device, None) as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a parameterless module)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def for_model(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """Where to run ``model``: ``device`` (after ``resolve``), or where the model already is when
    ``device`` is None or asks for CUDA on a machine without it (logged)."""
    current = of(model)
    device = resolve(device)
    if device is None:
        return current
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; keeping the model on %s", dev, current)
        return current
    return dev
