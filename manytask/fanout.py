"""Run a graph of independent stages (a study's (seed, recipe) stages, a flex pipeline's tasks) in sequence,
or fanned out on Ray (``pip install -e '.[cluster]'``): ``workers`` starts a local Ray with that many CPUs,
``address`` joins an existing cluster. Each stage is seeded and writes only its own directory, so the
results are those of the sequential run, and finished stages are reused when a study resumes.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Hashable, Optional

from manytask.errors import ManytaskError

log = logging.getLogger(__name__)
INSTALL = "pip install -e '.[cluster]'"

class ClusterError(ManytaskError, RuntimeError):
    """Stages cannot be fanned out (Ray is not installed)."""


Stage = tuple[Callable, tuple, list]  # (function, its arguments, keys of the stages it needs first)


def stage_gpus(device: str, cluster_gpus: float) -> float:
    """GPUs a stage asks Ray for: one where the cluster has GPUs and the device is not set to the CPU. With
    none asked, Ray hides every GPU from a stage (older Ray) or shows it all of them (newer: every stage would
    pick cuda:0); with one, Ray gives each stage its own GPU, seen as cuda:0."""
    return 1.0 if cluster_gpus > 0 and device not in ("cpu", "mps") else 0.0


def run_graph(stages: dict[Hashable, Stage], workers: int = 0, address: Optional[str] = None,
              gpus_per_stage: Optional[float] = None) -> dict:
    """Results by key. ``stages`` must be listed so that every stage comes after the stages it needs.
    ``gpus_per_stage``: default one GPU per stage where the cluster has GPUs (see ``stage_gpus``)."""
    for key, (_, _, deps) in stages.items():
        missing = [d for d in deps if d not in stages]
        if missing:
            raise ValueError(f"stage {key!r} needs unknown stage(s) {missing}")
    if not workers and not address:
        return {key: fn(*args) for key, (fn, args, _) in stages.items()}
    try:
        import ray
    except ImportError:
        raise ClusterError(f"fanning stages out needs Ray: install it with {INSTALL}") from None
    started = not ray.is_initialized()
    if started:
        env = {k: v for k, v in os.environ.items() if k.startswith(("MANYTASK_", "HF_", "TOKENIZERS_"))}
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True, runtime_env={"env_vars": env})
    try:
        if gpus_per_stage is None:
            gpus_per_stage = stage_gpus(os.environ.get("MANYTASK_DEVICE", "auto"), ray.cluster_resources().get("GPU", 0))
        refs: dict = {}
        for key, (fn, args, deps) in stages.items():
            remote = ray.remote(num_cpus=1, num_gpus=gpus_per_stage)(_after)
            refs[key] = remote.remote(fn, args, *[refs[d] for d in deps])
        log.info("fanned %d stages out on Ray", len(refs))
        return dict(zip(refs, ray.get(list(refs.values()))))
    finally:
        if started:
            ray.shutdown()


def _after(fn: Callable, args: tuple, *done):
    """Run ``fn`` once the stages it needs are done (Ray resolves ``done`` first)."""
    import torch

    torch.set_num_threads(1)  # one CPU per stage: stages share the machine
    return fn(*args)
