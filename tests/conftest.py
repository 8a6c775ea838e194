"""Shared fixtures: a miniature GLUE directory written by the tests, with GLUE's quirks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "glue"
WORDS = "good bad fine awful great poor lovely dull bright grim warm cold".split()


def _sent(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_mini_glue(root: Path, n: int = 40) -> Path:
    rng = random.Random(0)
    (root / "CoLA").mkdir(parents=True)
    for split in ("train", "dev"):  # no header, 4 columns, a quote that must stay text
        lines = [f"src\t{i % 2}\t\t\"{_sent(rng)}" for i in range(n)]
        (root / "CoLA" / f"{split}.tsv").write_text("\n".join(lines))  # no final newline, as CoLA dev
    (root / "CoLA" / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{_sent(rng)}\n" for i in range(10)))
    (root / "SST-2").mkdir()
    for split in ("train", "dev"):
        (root / "SST-2" / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{_sent(rng)} \t{i % 2}\n" for i in range(n)))
    (root / "SST-2" / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{_sent(rng)}\n" for i in range(10)))
    (root / "MRPC").mkdir()
    for split in ("train", "dev"):  # UTF-8 BOM before the header
        body = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
            f"{i % 2}\t{i}\t{i + 1000}\t{_sent(rng)}\t\" {_sent(rng)}\n" for i in range(n))
        (root / "MRPC" / f"{split}.tsv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    (root / "STS-B").mkdir()
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    for split in ("train", "dev"):
        (root / "STS-B" / f"{split}.tsv").write_text(head + "\tscore\n" + "".join(
            f"{i}\tg\tf\t2012\t{i:04d}\tnone\tnone\t{_sent(rng)}\t{_sent(rng)}\t{rng.uniform(0, 5):.3f}\n" for i in range(n)))
    (root / "STS-B" / "test.tsv").write_text(head + "\n" + "".join(
        f"{i}\tg\tf\t2012\t{i:04d}\tnone\tnone\t{_sent(rng)}\t{_sent(rng)}\n" for i in range(10)))
    (root / "MNLI").mkdir()
    labels = ["entailment", "neutral", "contradiction"]
    head = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    (root / "MNLI" / "dev_matched.tsv").write_text(head + "\n" + "".join(
        f"{i}\t\t\t\t\t\t\t\t{_sent(rng)}\t{_sent(rng)}\t\t{labels[i % 3]}\n" for i in range(3 * n)))
    (root / "diagnostic").mkdir()
    (root / "diagnostic" / "diagnostic.tsv").write_text("index\tsentence1\tsentence2\n" + "".join(
        f"{i}\t{_sent(rng)}\t{_sent(rng)}\n" for i in range(8)))
    return root


@pytest.fixture
def mini_glue(tmp_path, monkeypatch) -> Path:
    root = write_mini_glue(tmp_path / "glue")
    monkeypatch.setenv("MANYTASK_GLUE_DIR", str(root))
    return root


TINY = {"encoder": "default", "random_init": {"hidden_size": 32, "num_layers": 2, "num_heads": 4,
                                              "intermediate_size": 64}, "max_seq_length": 32}


@pytest.fixture
def tiny_config():
    """A dict recipe on the tiny random BERT; tests change what they need."""
    return {
        "seed": 3,
        "tasks": ["cola", "sst2", "mrpc", "stsb", {"name": "mnli", "resplit": {"source": "dev_matched"}}],
        "model": dict(TINY),
        "train": {"batch_size": 8, "steps": 12, "lr": 1e-3, "eval_every": 6, "log_every": 3, "progress": False},
    }


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Caches (rows given in memory, silver labels, scores of read-only bundles) go to a session folder, not
    the user's ~/.cache."""
    if "MANYTASK_CACHE" not in os.environ:
        os.environ["MANYTASK_CACHE"] = str(tmp_path_factory.mktemp("cache"))


FLEX_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flex_debug.yaml"


@pytest.fixture(scope="session")
def flex_run(tmp_path_factory):
    """The flex pipeline at debug scale (tiny random 4-layer BERT, 3 tasks), run once per session:
    full fine-tuning, partial k in {2, 3}, KD of the best-k branch into 1 layer, a mixed bundle."""
    from manytask.flex.config import load_flex
    from manytask.flex.pipeline import run_flex

    base = tmp_path_factory.mktemp("flex")
    glue = write_mini_glue(base / "glue")
    cfg = load_flex(FLEX_CONFIG, [f"glue_dir={glue}", "search.ks=[2, 3]", "compress.to=[1]", "mixed.delta=0.0"])
    out = base / "run"
    result = run_flex(cfg, out)
    return cfg, out, result
