"""A model's weights on disk: safetensors written atomically, read back with the names of earlier versions
mapped to today's, and refused loudly when they do not fit."""

from __future__ import annotations

from pathlib import Path

import torch

from manytask.errors import ManytaskError
from manytask.io import load_tensors, save_tensors


class WeightsError(ManytaskError, ValueError):
    """Weights that do not fit the model they are loaded into."""


def upgrade_state_dict(state: dict[str, torch.Tensor], tasks) -> dict[str, torch.Tensor]:
    """Weights saved by manytask before 0.2 named training-only heads ``aux_heads.<task>__<name>.*`` and
    ``slice_heads.<task>__<name>.*``; they are ``aux_heads.<task>.<name>.*`` now. Other names are unchanged."""
    names = sorted(tasks, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        family, _, rest = key.partition(".")
        if family in ("aux_heads", "slice_heads"):
            owner, _, tail = rest.partition(".")
            task = next((t for t in names if owner.startswith(f"{t}__")), None)
            if task is not None:
                key = f"{family}.{task}.{owner[len(task) + 2:]}.{tail}"
        out[key] = value
    return out


def save_weights(path: Path, model: torch.nn.Module) -> None:
    save_tensors(path, model.state_dict())


def read_weights(path: Path, model) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under today's names for ``model`` (a MultiTaskModel)."""
    return upgrade_state_dict(load_tensors(path), getattr(model, "specs", {}))


def load_weights(path: Path, model: torch.nn.Module) -> None:
    state = read_weights(path, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path}: checkpoint does not fit the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
