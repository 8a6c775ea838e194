"""Data parallelism on torch.distributed (launched by ``torchrun``), kept small.

Every rank draws the same seeded plan; at each step the global batch is the plan's batch and rank r takes
every W-th example of it, so all ranks train the same task. Losses are sums over a rank's examples divided
by ``denominator``: the global count of examples (or of labelled tokens, or of a slice's members) over W,
so that DDP's mean of the ranks' gradients is the gradient of the global mean — the same as one process
taking the whole batch. Rank 0 writes checkpoints and metrics and evaluates; the others wait at barriers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Sequence

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the rendezvous variables) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group torchrun describes: gloo on CPU, NCCL on CUDA."""
    if active() or not launched():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)


def barrier() -> None:
    if active():
        dist.barrier()


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's part of a global batch: every W-th example, starting at the rank."""
    return list(indices[rank()::world()])


_idle = False  # this rank holds no example of the step: it takes part in the collectives, counting nothing


@contextlib.contextmanager
def idle(flag: bool = True):
    """For a step whose global batch has fewer examples than processes: a rank without examples runs one
    example with zero weight, so every rank calls the same collectives, and counts none of it."""
    global _idle
    before, _idle = _idle, flag
    try:
        yield
    finally:
        _idle = before


def denominator(count, device=None) -> torch.Tensor:
    """The global count over W (the local count in one process): dividing a rank's loss sum by it makes the
    ranks' averaged gradients those of the global mean."""
    c = torch.as_tensor(0 if _idle else count, dtype=torch.float32, device=device).clone()
    if active():
        dist.all_reduce(c)
        c = c / world()
    return c


def check_same(name: str, value) -> None:
    """Fail clearly when ranks disagree (a plan drawn from other data, seeds or settings would silently differ)."""
    if not active():
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    digests: list = [None] * world()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on the {name} (hashes {digests}): every rank must see the same data, "
                           "config and seed")


def gather(obj) -> list:
    """Every rank's object, on every rank (e.g. RNG states, so a resumed run restores each rank's own)."""
    if not active():
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out
