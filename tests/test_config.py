import pytest

from manytask.config import ConfigError, load_config


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tasks: [sst2]\ntrain: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.lrr: unknown key"):
        load_config(p)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tasks: [sst2]\ntrain: {batch_size: many}\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(p)


def test_unknown_task_and_glue_field_misuse():
    cfg = load_config(data={"tasks": ["nosuchtask"]})
    with pytest.raises(ConfigError, match="unknown task 'nosuchtask'"):
        cfg.tasks[0].resolve(".")
    cfg = load_config(data={"tasks": [{"name": "sst2", "labels": ["a", "b"]}]})
    with pytest.raises(ConfigError, match="is a GLUE task"):
        cfg.tasks[0].resolve(".")


def test_overrides_parse_values_and_validate():
    cfg = load_config(data={"tasks": ["sst2"]}, overrides=["train.lr=3e-5", "train.sampling.alpha=0.5",
                                                          "model.pooling=mean"])
    assert cfg.train.lr == 3e-5 and cfg.train.sampling.alpha == 0.5 and cfg.model.pooling == "mean"
    with pytest.raises(ConfigError, match="model.pooling"):
        load_config(data={"tasks": ["sst2"]}, overrides=["model.pooling=max"])


def test_user_task_needs_labels(tmp_path):
    cfg = load_config(data={"tasks": [{"name": "t", "kind": "classification", "train": "x.csv",
                                       "text_fields": ["a"], "label_field": "y"}]})
    with pytest.raises(ConfigError, match="needs 'labels'"):
        cfg.tasks[0].resolve(tmp_path)


def test_debug_and_demo_configs_validate():
    for name in ("configs/debug.yaml", "configs/demo.yaml"):
        assert load_config(name).tasks
