import numpy as np
import pytest

from manytask.config import SamplingConfig
from manytask.data.samplers import batches_per_epoch, epoch_batches, make_plan, task_probabilities

SIZES = {"big": 1600, "mid": 400, "small": 100}
LENGTHS = {t: list(np.random.default_rng(0).integers(5, 60, n)) for t, n in SIZES.items()}


def test_proportional_draws_follow_alpha():
    for alpha in (0.0, 0.75, 1.0):
        cfg = SamplingConfig(strategy="proportional", alpha=alpha)
        plan = make_plan(LENGTHS, 4, 6000, cfg, seed=1)
        drawn = {t: d["batches"] / 6000 for t, d in plan.draws().items()}
        expected = task_probabilities(SIZES, cfg)
        for t in SIZES:
            assert abs(drawn[t] - expected[t]) < 0.02, (alpha, t)
    p = task_probabilities(SIZES, SamplingConfig(alpha=0.75))
    assert abs(p["big"] / p["small"] - 16 ** 0.75) < 1e-9


def test_temperature_and_uniform():
    t2 = task_probabilities(SIZES, SamplingConfig(strategy="temperature", temperature=2.0))
    assert abs(t2["big"] / t2["small"] - 4.0) < 1e-9
    u = task_probabilities(SIZES, SamplingConfig(strategy="uniform"))
    assert all(abs(v - 1 / 3) < 1e-9 for v in u.values())


def test_each_once_sees_every_example_once_per_epoch():
    steps = sum(-(-n // 8) for n in SIZES.values())
    plan = make_plan(LENGTHS, 8, steps, SamplingConfig(strategy="each_once"), seed=2)
    assert all(len(step) == 1 for step in plan.steps)  # per-task batching: one task a step
    for t, n in SIZES.items():
        seen = [i for step in plan.steps for i in step.get(t, [])]
        assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("group", [True, False])
def test_mixed_each_once_covers_every_example_once_per_epoch_in_mixed_batches(group):
    total = sum(SIZES.values())
    steps = batches_per_epoch(SIZES, 8, "mixed")
    assert steps == -(-total // 8)
    plan = make_plan(LENGTHS, 8, 2 * steps, SamplingConfig(strategy="each_once"), seed=2, group_by_length=group,
                     batching="mixed")
    for epoch in (plan.steps[:steps], plan.steps[steps:]):
        for t, n in SIZES.items():
            assert sorted(i for step in epoch for i in step.get(t, [])) == list(range(n)), (t, group)
    sizes = [sum(len(v) for v in step.values()) for step in plan.steps]
    assert sum(sizes) == 2 * total and max(sizes) == 8
    # batches really mix tasks: with 76% of examples from "big", 1 - 0.76^8 = 89% of batches hold several
    assert sum(len(step) > 1 for step in plan.steps) > 0.8 * len(plan.steps)


def test_mixed_proportional_draws_examples_at_the_tasks_rates():
    cfg = SamplingConfig(strategy="proportional", alpha=0.75)
    plan = make_plan(LENGTHS, 16, 1000, cfg, seed=4, batching="mixed")
    assert all(sum(len(v) for v in step.values()) == 16 for step in plan.steps)
    drawn = {t: d["examples"] / 16000 for t, d in plan.draws().items()}
    expected = task_probabilities(SIZES, cfg)
    for t in SIZES:
        assert abs(drawn[t] - expected[t]) < 0.015, t
    # each task walks through its own examples, an epoch at a time: the small task's first 100 draws
    # (in plan order without length grouping) are a permutation of its 100 examples
    ungrouped = make_plan(LENGTHS, 16, 1000, cfg, seed=4, group_by_length=False, batching="mixed")
    small = [i for step in ungrouped.steps for i in step.get("small", [])]
    assert sorted(small[:100]) == list(range(100)) and sorted(small[100:200]) == list(range(100))
    again = make_plan(LENGTHS, 16, 1000, cfg, seed=4, batching="mixed")
    assert again.steps == plan.steps
    assert make_plan(LENGTHS, 16, 1000, cfg, seed=5, batching="mixed").steps != plan.steps


def test_mixed_length_grouping_reduces_padding():
    cfg = SamplingConfig(strategy="proportional")

    def padding(group):
        plan = make_plan(LENGTHS, 16, 200, cfg, seed=1, group_by_length=group, batching="mixed")
        total = 0
        for step in plan.steps:
            lens = [LENGTHS[t][i] for t, idx in step.items() for i in idx]
            total += max(lens) * len(lens) - sum(lens)
        return total

    assert padding(True) < 0.3 * padding(False)


def test_plan_is_repeatable_and_seed_dependent():
    cfg = SamplingConfig()
    a, b = make_plan(LENGTHS, 8, 50, cfg, seed=5), make_plan(LENGTHS, 8, 50, cfg, seed=5)
    c = make_plan(LENGTHS, 8, 50, cfg, seed=6)
    assert a.steps == b.steps and a.steps != c.steps


def test_length_grouping_reduces_padding():
    lengths = list(np.random.default_rng(3).integers(5, 120, 4000))

    def padding(group):
        batches = epoch_batches(lengths, 16, np.random.default_rng(0), group)
        assert sorted(i for b in batches for i in b) == list(range(4000))
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(True) < 0.2 * padding(False)
