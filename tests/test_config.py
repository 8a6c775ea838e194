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


def test_glue_entries_take_scoring_keys_and_refuse_the_rest():
    cfg = load_config(data={"tasks": [{"name": "STS-B", "primary_metric": "pearson"}, {"name": "sst2", "display": "S"}]})
    stsb, sst2 = (t.resolve(".") for t in cfg.tasks)
    assert cfg.tasks[0].name == "stsb" and stsb.primary == "pearson" and stsb.metrics == ["pearson", "spearman"]
    assert sst2.title == "S"
    assert load_config(data={"tasks": ["stsb"]}).tasks[0].resolve(".").primary == "spearman"  # BAM's average
    with pytest.raises(ConfigError, match="'accuracy' is not a regression metric"):
        load_config(data={"tasks": [{"name": "stsb", "primary_metric": "accuracy"}]}).tasks[0].resolve(".")
    for key, value in (("quoting", True), ("encoding", "latin-1"), ("id_field", "x"), ("header", False)):
        with pytest.raises(ConfigError, match=f"GLUE task: {key} cannot be set"):
            load_config(data={"tasks": [{"name": "rte", key: value}]}).tasks[0].resolve(".")


@pytest.mark.parametrize("tasks, first, second", [
    (["sst2", "SST-2"], "'sst2', GLUE", "'SST-2', GLUE"),
    (["rte", {"name": "RTE", "kind": "classification", "train": "x.tsv", "text_fields": ["a"], "label_field": "b",
              "labels": ["p", "q"]}], "'rte', GLUE", "'RTE', user task"),
    ([{"name": "intent", "kind": "classification", "train": "x.tsv", "text_fields": ["a"], "label_field": "b",
       "labels": ["p", "q"]}, {"name": "Intent", "kind": "classification", "train": "y.tsv", "text_fields": ["a"],
                               "label_field": "b", "labels": ["p", "q"]}], "'intent', user task", "'Intent', user task"),
])
def test_the_same_task_twice_is_refused_naming_both_entries(tasks, first, second):
    with pytest.raises(ConfigError, match=rf"tasks\[0\] \({first}\) and tasks\[1\] \({second}\) are the same task"):
        load_config(data={"tasks": tasks})


def test_a_glue_alias_keys_per_task_settings_by_its_canonical_name():
    cfg = load_config(data={"tasks": [{"name": "SST-2", "branch_layers": 2}]})
    assert cfg.tasks[0].name == "sst2" and cfg.tasks[0].branch_layers == 2


def test_configs_saved_by_earlier_versions_still_open(tmp_path):
    """Earlier versions saved `quoting: true` on every GLUE entry (then the ignored default); a saved file
    is upgraded, a user's config with that key on a GLUE task is still refused."""
    p = tmp_path / "config.yaml"
    p.write_text("tasks:\n- {name: rte, quoting: true, header: true}\n")
    assert load_config(p, saved=True).tasks[0].resolve(".").name == "rte"
    with pytest.raises(ConfigError, match="quoting cannot be set"):
        load_config(p).tasks[0].resolve(".")
