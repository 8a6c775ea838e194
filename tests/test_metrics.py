import math

import pytest

from manytask.evaluation.metrics import collapsed, compute_metrics, glue_average


def test_against_hand_computed_values():
    y, p = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    m = compute_metrics(["accuracy", "f1", "matthews"], y, p)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # tp=2 fp=1 fn=1 -> F1 = 2*2/(2*2+1+1)
    assert m["f1"] == pytest.approx(4 / 6)
    # tn=1: MCC = (tp*tn - fp*fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2-1)/sqrt(3*3*2*2)
    assert m["matthews"] == pytest.approx(1 / 6)


def test_correlations():
    m = compute_metrics(["pearson", "spearman"], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 10.0])
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(14 / 250 ** 0.5)
    assert compute_metrics(["pearson"], [1.0, 2.0], [3.0, 3.0])["pearson"] == 0.0  # constant output


def test_collapse_and_average():
    assert collapsed([1, 1, 1], 2) and not collapsed([1, 0, 1], 2)
    assert glue_average({"cola": 0.5, "rte": 0.7, "wnli": 0.1}, excluded=["wnli"]) == pytest.approx(0.6)
    assert math.isnan(glue_average({}))
    with pytest.raises(ValueError):
        compute_metrics(["accuracy"], [1], [1, 0])


def test_bf16_warns_where_the_cpu_emulates_it(monkeypatch, caplog):
    import manytask.training.devices as predict_mod

    monkeypatch.setattr(predict_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(predict_mod, "_warned_bf16", False)
    with predict_mod.autocast("bf16"):
        pass
    assert "no native bf16" in caplog.text
    caplog.clear()
    with predict_mod.autocast("fp32"):
        pass
    assert caplog.text == ""


def test_devices_and_precisions_resolve_or_refuse(monkeypatch):
    import torch

    from manytask.training.devices import resolve_device, resolve_precision

    monkeypatch.delenv("MANYTASK_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == want and resolve_device("cpu").type == "cpu"
    monkeypatch.setenv("MANYTASK_DEVICE", "cpu")  # what --device sets; auto follows it
    assert resolve_device("auto").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
