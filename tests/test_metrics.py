"""Each kind's metrics against hand-computed values, the GLUE average, devices and precisions."""

import math

import numpy as np
import pytest

from manytask.evaluation.metrics import glue_average
from manytask.kinds import get_kind
from manytask.kinds.classification import collapsed
from manytask.records import Features, Predictions
from manytask.tasks import TaskSpec


def _spec(kind: str, metrics: list[str], **kw) -> TaskSpec:
    return TaskSpec(name="t", kind=kind, text_fields=["text"], label_field="label", metrics=metrics,
                    splits={"dev": {"path": "dev.tsv", "role": "dev"}}, **kw)


def _score(spec: TaskSpec, gold, values) -> dict:
    kind = get_kind(spec.kind)
    feats = Features([str(i) for i in range(len(gold))], [], [], [kind.target(spec, g) for g in gold])
    return kind.score(spec, Predictions(feats.ids, np.asarray(values), None), feats)


def test_against_hand_computed_values():
    spec = _spec("classification", ["accuracy", "f1", "matthews"], labels=["0", "1"])
    m = _score(spec, [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # tp=2 fp=1 fn=1 -> F1 = 2*2/(2*2+1+1)
    assert m["f1"] == pytest.approx(4 / 6)
    # tn=1: MCC = (tp*tn - fp*fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2-1)/sqrt(3*3*2*2)
    assert m["matthews"] == pytest.approx(1 / 6)
    assert not m["collapsed"] and m["n"] == 5


def test_correlations():
    spec = _spec("regression", ["pearson", "spearman"], label_range=(0.0, 10.0))
    m = _score(spec, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 10.0])
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(14 / 250 ** 0.5)
    assert _score(spec, [1.0, 2.0], [3.0, 3.0])["pearson"] == 0.0  # constant output


def test_collapse_and_average():
    assert collapsed([1, 1, 1], 2) and not collapsed([1, 0, 1], 2)
    assert glue_average({"cola": 0.5, "rte": 0.7, "wnli": 0.1}, excluded=["wnli"]) == pytest.approx(0.6)
    assert math.isnan(glue_average({}))
    with pytest.raises(ValueError):
        _score(_spec("classification", ["accuracy"], labels=["0", "1"]), [1], [1, 0])


def test_bf16_warns_where_the_cpu_emulates_it(caplog):
    from manytask.runtime import autocast, warn_emulated_bf16

    warn_emulated_bf16.cache_clear()
    with autocast("bf16", native_bf16=False):
        pass
    assert "no native bf16" in caplog.text
    caplog.clear()
    with autocast("bf16", native_bf16=True), autocast("fp32"):
        pass
    assert caplog.text == ""


def test_unresolved_precisions_are_refused_by_autocast():
    """``auto`` reached autocast raw and ran as fp16: only resolved precisions are taken now."""
    from manytask.runtime import DeviceError, autocast

    for bad in ("auto", "fp8", "int8"):
        with pytest.raises(DeviceError, match="not resolved"):
            autocast(bad)


def test_devices_and_precisions_resolve_or_refuse(monkeypatch):
    import torch

    from manytask.runtime import resolve_device, resolve_precision

    monkeypatch.delenv("MANYTASK_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == want and resolve_device("cpu").type == "cpu"
    monkeypatch.setenv("MANYTASK_DEVICE", "cpu")  # what --device sets; auto follows it
    assert resolve_device("auto").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == "bf16"
    # auto: bf16 only where the CPU computes it (AVX-512 BF16 / AMX); emulated bf16 is many times slower
    assert resolve_precision("auto", cpu, native_bf16=True) == "bf16"
    assert resolve_precision("auto", cpu, native_bf16=False) == "fp32"
    assert resolve_precision("auto", torch.device("mps"), native_bf16=True) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
