"""int8 activations: 8 bits where the CPU adds int8 products in 32 bits (VNNI), 7 elsewhere (torch's default,
which avoids fbgemm's 16-bit saturation), and the cached scores and plans named by which."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import manytask.models.precision as precision
from manytask.runtime import cpu_has_vnni


def _linear(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(384, 384), nn.GELU(), nn.Linear(384, 384)).eval()


def test_the_cpu_decides_the_activation_bits_and_the_cache_names(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: True)
    assert precision.int8_activation_bits() == 8
    assert precision.cache_kind("int8", "cpu") == "cpu-a8" and precision.cache_kind("auto", "cpu") == "cpu-a8"
    assert precision.cache_kind("fp32", "cpu") == "cpu" and precision.cache_kind("bf16", "cuda") == "cuda"
    eight = precision.quantize(_linear())
    assert type(eight[0]).__name__ == "FullRangeDynamicLinear"
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: False)
    assert precision.int8_activation_bits() == 7 and precision.cache_kind("int8", "cpu") == "cpu"
    seven = precision.quantize(_linear())
    assert type(seven[0]).__name__ == "Linear" and type(seven[0]).__module__.startswith("torch.ao")


@pytest.mark.skipif(not cpu_has_vnni(), reason="8-bit activations are used only on CPUs with VNNI")
def test_eight_bit_activations_are_closer_to_fp32_than_seven():
    x = torch.randn(64, 384) * 3
    with torch.inference_mode():
        ref = _linear()(x)
        errors = {}
        for full in (False, True):
            for per_channel in (False, True):
                got = precision.quantize(_linear(), per_channel=per_channel, full_range=full)(x)
                errors[full, per_channel] = (got - ref).abs().mean().item()
    assert errors[True, False] < 0.75 * errors[False, False]
    assert errors[True, True] < 0.75 * errors[False, True]
