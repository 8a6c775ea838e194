"""Where and how code runs: the device, the precision (and its autocast), and the process group.

Training, evaluation and serving all ask here. ``auto`` takes a GPU when torch sees one; ``--device`` on the
command line sets ``$MANYTASK_DEVICE``, which ``auto`` follows. Checkpoints are always written from CPU
copies, so a run trained on a GPU resumes, evaluates and serves on a CPU, and the reverse.

Under ``torchrun`` every rank draws the same plan; rank 0 writes files; ``barrier`` and ``gather`` keep the
ranks in step. Outside ``torchrun`` each of these is the one-process answer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist

from manytask.errors import ManytaskError

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


class DeviceError(ManytaskError, ValueError):
    """A device or precision this machine cannot give."""


# ---- devices and precision --------------------------------------------------------------------------------
def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = os.environ.get("MANYTASK_DEVICE", "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and device.index is not None and launched() and device.index != local_rank():
        raise DeviceError(f"device {name!r} under torchrun: every rank would take that one GPU; give --device "
                          f"cuda (each rank takes cuda:LOCAL_RANK; this rank is {local_rank()})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: torch sees no CUDA GPU here (use cpu or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r}: MPS is not available here")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere it is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot products that add in 32 bits (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def gpu_has_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (Ampere and later); ``torch.cuda.is_bf16_supported()`` alone also counts emulation."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch
        return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device, native_bf16: Optional[bool] = None) -> str:
    """``auto``: bf16 where the device computes it natively — Ampere and later GPUs, CPUs with AVX-512 BF16 or
    AMX — else fp32 (emulated bf16 is slower than fp32: on a V100 or T4, and up to 15x on a CPU without it).
    fp16 needs CUDA (with a gradient scaler). ``native_bf16`` is what the device can do, asked unless given."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        native = gpu_has_native_bf16(device) if native_bf16 is None else native_bf16
        if precision == "auto":
            return "bf16" if native else "fp32"
        if not native:
            log.warning("precision bf16 on %s: the GPU emulates bf16 (no native support), slower than fp32; "
                        "use fp16 or fp32 there", device)
    if precision == "auto":
        native = (cpu_has_native_bf16() if native_bf16 is None else native_bf16) if device.type == "cpu" else False
        return "bf16" if native else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError(f"precision fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
    if precision != "fp32" and device.type == "mps":
        raise DeviceError("on MPS, use precision fp32")
    return precision


@functools.lru_cache(maxsize=None)
def warn_emulated_bf16() -> None:
    """Once a process: bf16 on a CPU that emulates it."""
    log.warning("precision bf16: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag); "
                "bf16 is emulated and much slower than fp32 here")


def inference_precision(precision: str, device: torch.device) -> str:
    """The precision a trained run predicts in on this device: its training precision where the device runs it,
    else fp32 (a run trained in fp16 on a GPU evaluates on a CPU; bf16 stays bf16 only where it is native)."""
    if precision == "fp16" and device.type != "cuda":
        return "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return "fp32"
    if precision != "fp32" and device.type == "mps":
        return "fp32"
    return resolve_precision(precision, device)


def autocast(precision: str, device_type: str = "cpu", native_bf16: Optional[bool] = None):
    """bf16/fp16 autocast on the device; fp32 does nothing. Only resolved precisions are taken: ``auto`` (or a
    typo) would otherwise run silently in another precision.

    On a CPU, bf16 is 2-3x faster with AVX-512 BF16, but emulated and far slower without it (measured 15x
    slower on an AVX2-only CPU), so it is opt-in and warned about where the CPU lacks it (``native_bf16``:
    what the CPU can do, read from /proc/cpuinfo unless given).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise DeviceError(f"autocast: precision {precision!r} is not resolved (fp32, bf16 or fp16)")
    if precision == "bf16" and device_type == "cpu":
        if not (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
            warn_emulated_bf16()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ---- the process group ------------------------------------------------------------------------------------
def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank; after the group is left (the end of a run), the one torchrun gave it (RANK)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the rendezvous variables) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> bool:
    """Join the process group torchrun describes: gloo on CPU, NCCL on CUDA. Collectives wait up to
    $MANYTASK_DIST_TIMEOUT minutes (default 60; NCCL's own default, 10, is shorter than a long evaluation or
    checkpoint write). Returns whether this call created the group (its caller then destroys it)."""
    if active() or not launched():
        return False
    import datetime

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    minutes = float(os.environ.get("MANYTASK_DIST_TIMEOUT", "60"))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes))
    return True


def finish() -> None:
    """Leave the process group (the end of a run under torchrun)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's object on every rank (one process: the object)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


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


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (in place); the tensor itself in one process."""
    if active():
        dist.all_reduce(t)
    return t


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
