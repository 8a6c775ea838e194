"""Inference precision of a model: fp32, bf16 (autocast; on a CPU only where native, on a GPU where native),
fp16 (autocast on a GPU: the half precision of GPUs without bf16), int8 (dynamic quantisation of the trunk's and
branches' linear layers, one scale per weight tensor, done once at load, on the CPU; heads stay fp32),
int8-channel (the same with one scale per output channel: closer to fp32) and auto (a precision plan: int8 per
channel on the layers a search found harmless, the others fp32; ``serving.plan``).
int8 activations are quantised per batch to 8 bits on CPUs with VNNI, 7 elsewhere (``_full_range_linear``).

A model's quantisable *units* are its trunk layers (``trunk.3``) and each branch's layers (``branch.cola.0``);
a unit is changed whole, and only units some task runs count.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from manytask.errors import ManytaskError
from manytask.runtime import cpu_has_native_bf16, cpu_has_vnni, gpu_has_native_bf16

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-channel", "auto")
INT8 = ("int8", "int8-channel", "auto")  # int8 weights: the CPU's


class PrecisionError(ManytaskError, ValueError):
    """A precision this device cannot serve, or one that costs a task more than the tolerance."""


def check(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot run (or runs far slower than fp32)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision in INT8 and device.type != "cpu":
        raise PrecisionError(f"{precision} (dynamic int8 quantisation) runs on the CPU; serve with --device cpu")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise PrecisionError("bf16 on this CPU is emulated (no avx512_bf16/amx_bf16): far slower than fp32")
    if precision == "bf16" and device.type == "cuda" and not gpu_has_native_bf16(device):
        raise PrecisionError(f"bf16 on {device} is emulated (before Ampere): serve with --precision fp16")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError("fp16 serves on a CUDA GPU; on a CPU use fp32, bf16 (where native) or int8")


def _full_range_linear():
    """torch's dynamic int8 Linear always quantises activations to 7 bits (``reduce_range=True``): without VNNI,
    fbgemm adds pairs of u8×s8 products in 16 bits, which full-range activations can saturate. VNNI
    (``vpdpbusd``) adds them in 32 bits, so there the 8th bit is free accuracy: this Linear takes it."""
    from torch.ao.nn.quantized import dynamic as nnqd

    class FullRangeDynamicLinear(nnqd.Linear):
        def forward(self, x):
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                      reduce_range=False).to(x.dtype)

        def _get_name(self):
            return "FullRangeDynamicQuantizedLinear"

    return FullRangeDynamicLinear


_FULL_RANGE = None


def quantize(module: nn.Module, per_channel: bool = False, full_range: Optional[bool] = None) -> nn.Module:
    """int8 weights for the linear layers of ``module`` (in place), one scale per tensor or per output channel;
    activations are quantised per batch, to 8 bits where the CPU has VNNI (``full_range`` None), else 7."""
    global _FULL_RANGE
    from torch.ao import quantization as tq

    spec = {nn.Linear: tq.per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    mapping = None
    if cpu_has_vnni() if full_range is None else full_range:
        _FULL_RANGE = _FULL_RANGE or _full_range_linear()
        mapping = {**tq.get_default_dynamic_quant_module_mappings(), nn.Linear: _FULL_RANGE}
    with warnings.catch_warnings():  # torch.ao's deprecation notices, once per layer
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        return tq.quantize_dynamic(module, spec, dtype=torch.qint8, mapping=mapping, inplace=True)


def quantize_model(model, per_channel: bool = False) -> None:
    """The trunk's layers and every task's branch; heads stay fp32 (small, and the last word on the answer)."""
    quantize(model.adapter.layers, per_channel)
    for branch in model.branches.values():
        quantize(branch, per_channel)


def units(model) -> dict[str, tuple[nn.Module, frozenset[str]]]:
    """Each quantisable unit that some task runs: name -> (module, the tasks whose answers it changes)."""
    out: dict[str, tuple[nn.Module, frozenset[str]]] = {}
    for i, layer in enumerate(model.adapter.layers):
        tasks = frozenset(t for t in model.task_names if model.split_depth[t] > i)
        if tasks:
            out[f"trunk.{i}"] = (layer, tasks)
    for task, branch in model.branches.items():
        for j, layer in enumerate(branch):
            out[f"branch.{task}.{j}"] = (layer, frozenset([task]))
    return out


def apply_plan(model, int8_units: Iterable[str]) -> list[str]:
    """int8 (per channel) on the named units of ``model``, in place; names it does not have are skipped (a
    task added after the plan was made). Returns the units changed."""
    have = units(model)
    done = [u for u in int8_units if u in have]
    for u in done:
        quantize(have[u][0], per_channel=True)
    return done


def apply_precision(model, precision: str, plan: Optional[Iterable[str]] = None) -> None:
    """A served precision's weights, in place: int8 per tensor or per channel everywhere, or a plan's units."""
    if precision == "int8":
        quantize_model(model)
    elif precision == "int8-channel":
        quantize_model(model, per_channel=True)
    elif precision == "auto":
        apply_plan(model, plan or [])


def int8_activation_bits() -> int:
    """The bits int8 layers quantise activations to on this CPU (see ``_full_range_linear``)."""
    return 8 if cpu_has_vnni() else 7


def cache_kind(precision: str, device_type: str) -> str:
    """The device part of a cached score's or plan's name: an int8 score also depends on the activation bits,
    so where they are 8 it reads ``cpu-a8`` (7-bit names are the ones written before the choice existed)."""
    if precision in INT8 and device_type == "cpu" and int8_activation_bits() == 8:
        return "cpu-a8"
    return device_type


def autocast_precision(precision: str) -> str:
    """What autocast runs for a served precision: int8 is in the weights, fp32 arithmetic around them."""
    return precision if precision in ("bf16", "fp16") else "fp32"
