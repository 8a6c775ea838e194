"""Every user mistake on the command line prints one line, ``error: ...``, exits 2, and shows no traceback."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from manytask.cli import app
from tests.conftest import TINY, write_mini_glue

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    glue = write_mini_glue(base / "glue")
    cfg = {"seed": 1, "tasks": ["sst2", "stsb"], "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 2, "progress": False}}
    (base / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", "-c", str(base / "cfg.yaml"), "-o", str(base / "run")],
                        env={"MANYTASK_GLUE_DIR": str(glue)})
    assert res.exit_code == 0, res.output
    (base / "bad.yaml").write_text(yaml.safe_dump({**cfg, "train": {"nope": 1}}))
    (base / "noenc.yaml").write_text(yaml.safe_dump({**cfg, "model": {"encoder": str(base / "no-such-encoder")}}))
    (base / "in.tsv").write_text("sentence\ngood fine\n")
    (base / "empty").mkdir()
    (base / "token.txt").write_text("short\n")
    return base, glue


CASES = {
    "eval of no run": (["eval", "{base}/nowhere"], "not a manytask run"),
    "eval without the data": (["eval", "{base}/run", "--glue-dir", "{base}/empty"], "no task could be loaded"),
    "targets of no run": (["targets", "{base}/nowhere", "-o", "{base}/t"], "not a manytask run"),
    "targets without the data": (["targets", "{base}/run", "-o", "{base}/t", "--glue-dir", "{base}/empty"],
                                 "no task could be loaded"),
    "predict an unknown task": (["predict", "{base}/run", "-t", "nope", "-i", "{base}/in.tsv", "-o", "{base}/o.jsonl"],
                                "unknown task 'nope'"),
    "predict a missing file": (["predict", "{base}/run", "-t", "sst2", "-i", "{base}/none.tsv", "-o", "{base}/o.jsonl"],
                               "file not found"),
    "train with an unknown key": (["train", "-c", "{base}/bad.yaml", "-o", "{base}/r2"], "train.nope: unknown key"),
    "train with a missing encoder": (["train", "-c", "{base}/noenc.yaml", "-o", "{base}/r3"], "is not found"),
    "train without a config": (["train", "-o", "{base}/r4"], "give --config"),
    "bundle list of no bundle": (["bundle", "list", "{base}/nowhere"], "not a bundle"),
    "report of nothing": (["report", "{base}/run"], "neither a study"),
    "bam without its config": (["bam", "-c", "{base}/none.yaml"], "study config file not found"),
    "ask an unknown task": (["ask", "{base}/run", "good", "--task", "nope"], "unknown task"),
    "serve with a short token": (["serve", "{base}/run", "--admin-token-file", "{base}/token.txt"], "at least 16"),
    "an ensemble of one run": (["ensemble", "{base}/run", "-t", "sst2", "-o", "{base}/e"], "two or more runs"),
    "weak without its config": (["weak", "-c", "{base}/none.yaml", "-o", "{base}/w"], "config file not found"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line(setup, case):
    base, glue = setup
    args, message = CASES[case]
    res = runner.invoke(app, [a.format(base=base) for a in args], env={"MANYTASK_GLUE_DIR": str(glue)})
    lines = [line for line in res.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert res.exit_code == 2, (res.output, repr(res.exception))
    assert len(errors) == 1 and lines[-1] == errors[0] and message in errors[0], lines
    assert "Traceback" not in res.output and not isinstance(res.exception, Exception) or \
        isinstance(res.exception, SystemExit)


def test_nothing_is_written_before_the_encoder_loads(setup):
    base, glue = setup
    runner.invoke(app, ["train", "-c", str(base / "noenc.yaml"), "-o", str(base / "r5")],
                  env={"MANYTASK_GLUE_DIR": str(glue)})
    assert not (base / "r5").exists()
    json.dumps(CASES)  # the table above stays plain data
