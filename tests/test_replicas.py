"""Replicas: servers that follow changes made to their bundle on disk by the CLI or another replica, and
`serve --workers N` (processes sharing the port)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from manytask.bundles import Bundle
from manytask.cli import app as cli
from manytask.serving.app import Limits, create_app
from manytask.serving.predictor import MergedPredictor
from tests.test_flex import TEXTS, other_run
from tests.test_serving import own_answers
from tests.test_serving_faults import LiveServer

pytestmark = pytest.mark.slow  # several processes


@pytest.fixture
def bundle(flex_run, tmp_path) -> Bundle:
    shutil.copytree(flex_run[1] / "bundle", tmp_path / "bundle")
    return Bundle(tmp_path / "bundle")


def _probs(url: str) -> list[float]:
    r = httpx.post(f"{url}/v1/predict", json={"inputs": [{"text": t} for t in TEXTS], "tasks": ["sst2"]}, timeout=30)
    assert r.status_code == 200, r.text
    return [x["sst2"]["probs"]["1"] for x in r.json()["results"]]


def test_two_replicas_follow_a_cli_update_of_their_bundle(flex_run, bundle):
    new = [a["probs"]["1"] for a in own_answers(flex_run, "sst2", TEXTS, run=other_run(flex_run, "sst2"))]
    apps = [create_app(MergedPredictor(Bundle(bundle.root)), Limits(max_wait_ms=1), watch_interval=0.2)
            for _ in range(2)]
    with LiveServer(apps[0]) as a, LiveServer(apps[1]) as b:
        before = [_probs(a.url), _probs(b.url)]
        assert before[0] == pytest.approx(before[1]) and before[0] != pytest.approx(new, abs=1e-4)
        res = CliRunner().invoke(cli, ["bundle", "update", str(bundle.root), "--from", str(other_run(flex_run, "sst2")),
                                       "--task", "sst2"])
        assert res.exit_code == 0, res.output
        deadline = time.time() + 20
        while time.time() < deadline:
            now = [_probs(a.url), _probs(b.url)]
            if all(p == pytest.approx(new, abs=1e-5) for p in now):
                break
            time.sleep(0.2)
        assert all(p == pytest.approx(new, abs=1e-5) for p in now)  # both converged on the new version
        res = CliRunner().invoke(cli, ["bundle", "remove", str(bundle.root), "mrpc"])
        assert res.exit_code == 0
        deadline = time.time() + 20
        while time.time() < deadline and any("mrpc" in [t["name"] for t in httpx.get(f"{u}/v1/tasks").json()["tasks"]]
                                             for u in (a.url, b.url)):
            time.sleep(0.2)
        assert all("mrpc" not in [t["name"] for t in httpx.get(f"{u}/v1/tasks").json()["tasks"]] for u in (a.url, b.url))


def test_serve_with_two_worker_processes(flex_run, bundle, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "manytask.cli", "serve", str(bundle.root), "--port", str(port),
                             "--workers", "2"], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline, ok = time.time() + 120, False
        while time.time() < deadline and not ok:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ok, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no answer"
        want = [a["probs"]["1"] for a in own_answers(flex_run, "sst2", TEXTS)]
        for _ in range(4):
            assert _probs(f"http://127.0.0.1:{port}") == pytest.approx(want, abs=1e-5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
