"""Inference precision of a model: fp32, bf16 (autocast; on a CPU only where native, on a GPU where native),
fp16 (autocast on a GPU: the half precision of GPUs without bf16) or int8 (dynamic quantisation of the
trunk's and branches' linear layers, done once at load, on the CPU; heads stay fp32)."""

from __future__ import annotations

import torch
from torch import nn

from manytask.errors import ManytaskError
from manytask.runtime import cpu_has_native_bf16, gpu_has_native_bf16

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


class PrecisionError(ManytaskError, ValueError):
    """A precision this device cannot serve, or one that costs a task more than the tolerance."""


def check(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot run (or runs far slower than fp32)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("int8 (dynamic quantisation) runs on the CPU; serve with --device cpu")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise PrecisionError("bf16 on this CPU is emulated (no avx512_bf16/amx_bf16): far slower than fp32")
    if precision == "bf16" and device.type == "cuda" and not gpu_has_native_bf16(device):
        raise PrecisionError(f"bf16 on {device} is emulated (before Ampere): serve with --precision fp16")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError("fp16 serves on a CUDA GPU; on a CPU use fp32, bf16 (where native) or int8")


def quantize(module: nn.Module) -> nn.Module:
    """int8 weights for the linear layers of ``module`` (in place); activations are quantised per batch."""
    return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_model(model) -> None:
    """The trunk's layers and every task's branch; heads stay fp32 (small, and the last word on the answer)."""
    quantize(model.adapter.layers)
    for branch in model.branches.values():
        quantize(branch)




def autocast_precision(precision: str) -> str:
    """What autocast runs for a served precision: int8 is in the weights, fp32 arithmetic around them."""
    return precision if precision in ("bf16", "fp16") else "fp32"
