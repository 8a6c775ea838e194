"""The model a config describes: encoder, branches, heads and the training-only extras its tasks ask for;
and the weights a run starts from (another run's, for fine-tuning)."""

from __future__ import annotations

import logging
from pathlib import Path

from manytask.config import ConfigError, RunConfig
from manytask.encoders.loading import load_encoder
from manytask.errors import NotFound
from manytask.io import load_tensors
from manytask.models.checkpoints import CheckpointDir
from manytask.models.multitask import MultiTaskModel
from manytask.models.weights import upgrade_state_dict
from manytask.runtime import seed_everything

log = logging.getLogger(__name__)


def build_model(cfg: RunConfig, specs, encoder) -> MultiTaskModel:
    model = MultiTaskModel(
        encoder, specs, {t.name: t.branch_layers for t in cfg.tasks}, pooling=cfg.model.pooling, dropout=cfg.model.dropout,
        split_depth={t.name: t.split_depth for t in cfg.tasks if t.split_depth is not None},
    )
    for t in cfg.tasks:
        if t.name not in model.specs:
            continue  # a task absent from the data (skipped GLUE task)
        for a in t.auxiliary:
            if a.labels:
                model.add_aux(t.name, a.name, len(a.labels), cfg.model.dropout)
        if t.slices is not None and t.slices.mode == "heads":
            for fn in t.slices.functions:
                model.add_slice_head(t.name, fn.name, cfg.model.dropout)
        elif t.slices is not None and t.slices.mode == "sbl":
            model.use_sbl_head(t.name, 1 + len(t.slices.functions), cfg.model.dropout)
    if cfg.model.freeze_trunk:
        model.freeze_trunk()
    return model


def init_weights(model: MultiTaskModel, source: Path, tasks: list[str], which: str = "last") -> Path:
    """Start from another run's weights: its last checkpoint (the trained model, as BAM and MeTaL
    fine-tune it), or with ``which="best"`` the checkpoint that was best on dev for the one task
    being trained. Every parameter of ``model`` must be found there with the same shape."""
    ckpt = CheckpointDir(Path(source) / "checkpoints")
    if which == "best":
        best = ckpt.best()
        if len(tasks) != 1 or tasks[0] not in best:
            raise ConfigError(f"model.init_checkpoint: best needs one task that {source} was scored on "
                              f"(tasks {tasks}; {source} has best checkpoints for {sorted(best)})")
        weights = ckpt.root / best[tasks[0]]["weights"]
    elif ckpt.last() is not None:
        weights = ckpt.root / ckpt.last()["weights"]
    else:
        raise NotFound(f"model.init_from: {source} has no checkpoint")
    state = upgrade_state_dict(load_tensors(weights), model.specs)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ConfigError(f"model.init_from: {weights} does not fit this model "
                          f"(missing {missing[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict({k: state[k] for k in own})
    log.info("initialised from %s", weights)
    return weights


def initial_model(cfg: RunConfig, specs=None) -> MultiTaskModel:
    """The model a run starts training from: the encoder (pretrained, or random), the branches and
    heads, then ``model.init_from``'s weights where the config names a source run."""
    specs = specs if specs is not None else [t.resolve(Path.cwd()) for t in cfg.tasks]
    seed_everything(cfg.seed)
    model = build_model(cfg, specs, load_encoder(cfg.model))
    if cfg.model.init_from:
        init_weights(model, Path(cfg.model.init_from), [s.name for s in specs], cfg.model.init_checkpoint)
    return model
