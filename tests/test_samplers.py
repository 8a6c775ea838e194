import numpy as np

from manytask.config import SamplingConfig
from manytask.data.samplers import epoch_batches, make_plan, task_probabilities

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
    for t, n in SIZES.items():
        seen = [i for task, idx in plan.steps if task == t for i in idx]
        assert sorted(seen) == list(range(n))


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
