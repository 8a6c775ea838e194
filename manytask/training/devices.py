"""Where and in what precision a model runs: ``auto`` takes a GPU when torch sees one.

``--device`` on the command line sets ``$MANYTASK_DEVICE``, which ``auto`` follows. Checkpoints are
always written from CPU copies, so a run trained on a GPU resumes, evaluates and serves on a CPU, and the
reverse.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)
_warned_bf16 = False


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = os.environ.get("MANYTASK_DEVICE", "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here (use cpu or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere it is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, else fp32. fp16 needs CUDA (with a gradient scaler)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
    if precision != "fp32" and device.type == "mps":
        raise ValueError("on MPS, use precision fp32")
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    """bf16/fp16 autocast on the device; fp32 does nothing.

    On a CPU, bf16 is 2-3x faster with AVX-512 BF16, but emulated and far slower without it (measured 15x
    slower on an AVX2-only CPU), so it is opt-in and warned about where the CPU lacks it.
    """
    global _warned_bf16
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16" and device_type == "cpu" and not _warned_bf16 and not cpu_has_native_bf16():
        log.warning("precision bf16: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag); "
                    "bf16 is emulated and much slower than fp32 here")
        _warned_bf16 = True
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
