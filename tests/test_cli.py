"""The commands end to end on the tiny random recipe: train, eval, predict, submit, and their errors."""

import json

import yaml
from typer.testing import CliRunner

from manytask.cli import app

runner = CliRunner()


def _config(tmp_path, cfg) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_train_eval_predict_submit(mini_glue, tiny_config, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, tiny_config), "-o", str(run), "--set", "train.steps=6"])
    assert r.exit_code == 0, r.output
    assert "MNLI-m (dev_matched re-split)" in r.output and "Avg" in r.output and "drawn" in r.output
    assert "| dev, last step (one model) |" in r.output

    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["tasks"]) == {"cola", "sst2", "mrpc", "stsb", "mnli"}
    assert 0.0 <= ev["tasks"]["mrpc"]["dev"]["f1"] <= 1.0

    inp = tmp_path / "in.jsonl"
    inp.write_text('{"sentence": "good fine"}\n{"sentence": "awful grim"}\n')
    r = runner.invoke(app, ["predict", str(run), "--task", "sst2", "-i", str(inp), "-o", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["prediction"] in ("0", "1")
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-4

    sub = tmp_path / "sub"
    r = runner.invoke(app, ["submit", str(run), "--out", str(sub)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in sub.iterdir()) == ["AX.tsv", "CoLA.tsv", "SST-2.tsv", "STS-B.tsv"]
    lines = (sub / "STS-B.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert 0.0 <= float(lines[1].split("\t")[1]) <= 5.0
    assert "MRPC" in r.output and "missing" in r.output  # mini GLUE has no MRPC test file: said, not fatal


def test_absent_glue_task_is_skipped_with_a_note(mini_glue, tiny_config, tmp_path):
    tiny_config["tasks"] = ["sst2", "qqp"]
    tiny_config["train"]["steps"] = 2
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, tiny_config), "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "QQP: skipped" in r.output and "QQP/train.tsv" in r.output


def test_errors_name_the_problem(mini_glue, tiny_config, tmp_path):
    tiny_config["train"]["lrr"] = 1
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, tiny_config), "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "train.lrr: unknown key" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,pos\nok,neutral\n")
    cfg = {"tasks": [{"name": "mine", "kind": "classification", "train": str(bad), "dev": str(bad),
                      "text_fields": ["text"], "label_field": "label", "labels": ["pos", "neg"]}],
           "model": tiny_config["model"]}
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, cfg), "-o", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "bad.csv, line 3, field 'label'" in r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "not a manytask run" in r.output


def test_user_task_from_csv(tmp_path, tiny_config):
    rows = "".join(f"{'great fine lovely' if i % 2 else 'awful dull grim'} {i},{'pos' if i % 2 else 'neg'}\n"
                   for i in range(40))
    (tmp_path / "t.csv").write_text("review,sentiment\n" + rows)
    cfg = {"tasks": [{"name": "reviews", "kind": "classification", "train": str(tmp_path / "t.csv"),
                      "dev": str(tmp_path / "t.csv"), "text_fields": ["review"], "label_field": "sentiment",
                      "labels": ["neg", "pos"], "metrics": ["accuracy", "f1_macro"]}],
           "model": tiny_config["model"], "train": {"steps": 8, "batch_size": 8, "lr": 1e-3, "progress": False}}
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, cfg), "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "reviews (acc/F1m)" in r.output


def _user_run(tmp_path, tiny_config, test_file: bool):
    """A user classification task (TSV with a stray quote) and a regression task, trained a few steps."""
    rows = "".join(f"q{i}\t{chr(34) if i == 3 else ''}{'great fine' if i % 2 else 'awful dull'} {i}\t{'pos' if i % 2 else 'neg'}\n"
                   for i in range(24))
    (tmp_path / "t.tsv").write_text("id\treview\tsentiment\n" + rows)
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"a": f"w{i}", "b": f"v{i}", "score": i % 5}) + "\n"
                                              for i in range(24)))
    cls = {"name": "reviews", "kind": "classification", "train": str(tmp_path / "t.tsv"), "dev": str(tmp_path / "t.tsv"),
           "text_fields": ["review"], "label_field": "sentiment", "id_field": "id", "labels": ["neg", "pos"]}
    if test_file:
        cls["test"] = str(tmp_path / "t.tsv")
    reg = {"name": "sim", "kind": "regression", "train": str(tmp_path / "s.jsonl"), "dev": str(tmp_path / "s.jsonl"),
           "text_fields": ["a", "b"], "label_field": "score", "label_range": [0, 4]}
    cfg = {"tasks": [cls, reg], "model": tiny_config["model"],
           "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "progress": False}}
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "-c", _config(tmp_path, cfg), "-o", str(run)])
    assert r.exit_code == 0, r.output
    return run


def test_user_tasks_predict_one_row_per_record_and_submit(tmp_path, tiny_config):
    run = _user_run(tmp_path, tiny_config, test_file=True)
    inp = tmp_path / "in.tsv"  # a quote opening a field is text in TSV: 4 records, 4 predictions
    inp.write_text('review\n"great fine\nawful\n"dull" grim\nfine\n')
    r = runner.invoke(app, ["predict", str(run), "--task", "reviews", "-i", str(inp), "-o", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    assert "wrote 4 predictions" in r.output and "one per record" in r.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4
    sims = tmp_path / "pairs.jsonl"
    sims.write_text('{"a": "w1", "b": "v1"}\n{"a": "w2", "b": "v3"}\n')
    r = runner.invoke(app, ["predict", str(run), "--task", "sim", "-i", str(sims), "-o", str(tmp_path / "s.jsonl")])
    assert r.exit_code == 0, r.output
    preds = [json.loads(l)["prediction"] for l in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert all(isinstance(p, float) and 0.0 <= p <= 4.0 for p in preds)  # numbers, not strings
    sub = tmp_path / "sub"
    r = runner.invoke(app, ["submit", str(run), "--out", str(sub)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in sub.iterdir()) == ["reviews.tsv"]
    lines = (sub / "reviews.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 25
    assert [l.split("\t")[0] for l in lines[1:4]] == ["q0", "q1", "q2"]  # ids from id_field
    assert all(l.split("\t")[1] in ("neg", "pos") for l in lines[1:])
    assert "sim: no test file in the task's entry" in r.output


def test_submit_says_why_it_wrote_nothing(tmp_path, tiny_config):
    run = _user_run(tmp_path, tiny_config, test_file=False)
    r = runner.invoke(app, ["submit", str(run), "--out", str(tmp_path / "sub")])
    assert r.exit_code == 0, r.output
    assert "reviews: no test file in the task's entry (give 'test: FILE'" in r.output
    assert "wrote nothing" in r.output and "see the notes above" in r.output


def test_any_run_is_bundled_served_and_asked_as_one_model(mini_glue, tiny_config, tmp_path):
    import pytest
    from fastapi.testclient import TestClient

    from manytask import api
    from manytask.bundles import Bundle
    from manytask.runs import Run
    from manytask.serving.app import create_app
    from manytask.serving.predictor import MergedPredictor

    tiny_config["tasks"] = ["sst2", "cola", "stsb"]
    tiny_config["train"].update(steps=4, eval_every=None)
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", "-c", _config(tmp_path, tiny_config), "-o", str(run)]).exit_code == 0
    r = runner.invoke(app, ["bundle", "create", str(tmp_path / "b"), "--from", str(run)])
    assert r.exit_code == 0 and "fine-tuned" in r.output, r.output
    bundle = Bundle(tmp_path / "b")
    assert bundle.manifest["trunk"]["frozen"] is False and bundle.task_names() == ["cola", "sst2", "stsb"]
    # the bundle's answers are the run's own model's (its last checkpoint), for every task at once
    model = Run.open(run).model_for()
    texts = ["good fine day", "awful grim cold"]
    want = [a.to_json() for a in api.Model(model, Run.open(run).tokenizer(), 32).predict(texts, task="sst2")]
    with TestClient(create_app(MergedPredictor(bundle))) as c:
        got = c.post("/v1/predict", json={"inputs": [{"text": t} for t in texts]}).json()
    assert got["tasks"] == ["cola", "sst2"]
    for g, w in zip(got["results"], want):
        assert g["sst2"]["probs"]["1"] == pytest.approx(w["probs"]["1"], abs=1e-5)
    r = runner.invoke(app, ["bundle", "create", str(tmp_path / "b2"), "--from", str(run), "--checkpoint", "best"])
    assert r.exit_code == 2 and "fine-tuned" in r.output
    # `ask` on the run itself bundles it into RUN/bundle and answers through the server's predictor
    r = runner.invoke(app, ["ask", str(run), "good fine day", "awful grim cold"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(l) for l in r.output.splitlines() if l.startswith("{")]
    assert [l["text"] for l in lines] == texts and set(lines[0]) == {"text", "cola", "sst2"}
    assert lines[0]["sst2"]["probs"]["1"] == pytest.approx(want[0]["probs"]["1"], abs=1e-5)
    assert (run / "bundle" / "manifest.json").exists()
    r = runner.invoke(app, ["ask", str(run), "a man plays", "--pair", "someone plays"])
    assert r.exit_code == 0 and '"stsb"' in r.output, r.output
