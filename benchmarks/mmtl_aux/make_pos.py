"""A silver part-of-speech tagging task for the mmtl_aux benchmark: SST-2 sentences (a seeded sample of the
training file, and the dev file) tagged by Pattern's lexicon tagger as TextBlob ships it, written as JSONL
{"tokens": [...], "tags": [...]}. Silver data, generated (never committed):

    .venv/bin/python benchmarks/mmtl_aux/make_pos.py OUT_DIR [--train 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import manytask as mt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=1500)
    args = ap.parse_args()
    from textblob.en.taggers import PatternTagger

    tagger = PatternTagger()
    os.environ.setdefault("MANYTASK_GLUE_DIR", "../shared/glue")
    sst2 = mt.task_data({"tasks": ["sst2"]})["sst2"]
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("dev", None)):
        examples = sst2.train if split == "train" else sst2.evals["dev"]
        if n is not None:
            examples = random.Random(0).sample(examples, n)
        with open(args.out / f"pos_{split}.jsonl", "w") as f:
            for e in examples:
                pairs = tagger.tag(e.text_a)
                if pairs:
                    f.write(json.dumps({"tokens": [w for w, _ in pairs], "tags": [t for _, t in pairs]}) + "\n")
    print(f"wrote {args.out}/pos_train.jsonl, pos_dev.jsonl")


if __name__ == "__main__":
    main()
