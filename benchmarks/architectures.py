"""Every encoder family manytask supports, on a tiny random encoder saved by transformers (hidden 32, 3
layers): train two GLUE tasks on a frozen trunk with a one-layer branch, bundle, serve through the HTTP app,
export to transformers and ONNX. And, on the real MiniLM (five task heads), the exported ONNX bundle's
in-process throughput against PyTorch eager, interleaved, median of the rounds. Prints tables and writes
benchmarks/results/architectures.json.

    .venv/bin/python benchmarks/architectures.py [--rounds 5] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import manytask as mt  # noqa: E402
from tests.tiny_encoders import ARCHITECTURES, save_tiny  # noqa: E402


def round_trip(arch: str, work: Path) -> dict:
    from fastapi.testclient import TestClient

    path = save_tiny(arch, work / "encoders")
    start = time.perf_counter()
    cfg = {"tasks": [{"name": "sst2", "max_train": 32, "max_eval": 16, "branch_layers": 1},
                     {"name": "mrpc", "max_train": 32, "max_eval": 16, "branch_layers": 1}],
           "model": {"encoder": str(path), "max_seq_length": 32, "pooling": "mean", "freeze_trunk": True},
           "train": {"batch_size": 8, "steps": 4, "lr": 1e-3, "progress": False}}
    run = mt.train(cfg, work / arch / "run")
    bundle = run.to_bundle(work / arch / "bundle", "best")
    own = {t: mt.Model(run.model_for(t), run.tokenizer(), 32).predict(["good fine day"], task=t)[0]
           for t in ("sst2",)}
    with TestClient(mt.app(bundle.root)) as c:
        served = c.post("/v1/predict", json={"inputs": [{"text": "good fine day"}], "tasks": ["sst2"]}).json()
    equal = abs(served["results"][0]["sst2"]["probs"]["1"] - own["sst2"].probs["1"]) < 1e-5
    hf = mt.export_model(bundle.root, work / arch / "hf", "hf", "sst2")
    onnx = mt.export_model(bundle.root, work / arch / "onnx", "onnx")
    return {"trained": True, "bundled": True, "served_equals_own": equal, "hf_export": hf["form"],
            "onnx_max_abs_difference": onnx["check"]["max_abs_difference"], "seconds": time.perf_counter() - start}


def onnx_throughput(work: Path, rounds: int, batch: int = 32) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from manytask.config import ModelConfig
    from manytask.encoders.loading import load_encoder, load_tokenizer
    from manytask.inference import tokenize
    from manytask.models.multitask import MultiTaskModel
    from manytask.tasks import glue_task

    torch.manual_seed(0)
    tasks = ["sst2", "cola", "mrpc", "stsb", "rte"]
    net = MultiTaskModel(load_encoder(ModelConfig(max_seq_length=64, pooling="mean")), [glue_task(t) for t in tasks],
                         pooling="mean", dropout=0.0).eval()
    tok = load_tokenizer("default")
    bundle = mt.Model(net, tok, 64).to_bundle(work / "minilm-bundle")
    mt.export_model(bundle.root, work / "minilm-onnx", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(work / "minilm-onnx" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    glue = mt.task_data({"tasks": [{"name": "sst2", "max_eval": 512}]}, with_train=False)["sst2"]
    texts = [e.text_a for e in glue.evals["dev"]]
    batches = [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    rates = {"pytorch_eager": [], "onnx_runtime": []}
    for _ in range(rounds):
        for name in rates:
            start = time.perf_counter()
            for b in batches:
                enc = tokenize(tok, b, None, 64)
                if name == "pytorch_eager":
                    with torch.inference_mode():
                        net(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], tasks=tasks)
                else:
                    session.run(None, {k: enc[k].numpy().astype(np.int64) for k in names})
            rates[name].append(len(batches) * batch / (time.perf_counter() - start))
    out = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v} for k, v in rates.items()}
    ratios = [a / b for a, b in zip(rates["onnx_runtime"], rates["pytorch_eager"])]
    out["ratio_onnx_over_eager"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    out.update(tasks=tasks, batch=batch, max_seq_length=64, inputs=len(batches) * batch,
               torch_threads=torch.get_num_threads(), onnxruntime=ort.__version__)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "architectures.json")
    args = ap.parse_args()
    os.environ.setdefault("MANYTASK_GLUE_DIR", str(ROOT.parent / "shared" / "glue"))
    import transformers

    transformers.utils.logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="manytask-arch-"))
    rows = {}
    for arch in ARCHITECTURES:
        try:
            rows[arch] = round_trip(arch, work)
        except Exception as e:  # a family that fails is a row that says so
            rows[arch] = {"error": f"{type(e).__name__}: {e}"}
    print("| architecture | train | bundle | served = own model | hf export | ONNX max abs diff |")
    print("|---|---|---|---|---|---|")
    for arch, r in rows.items():
        if "error" in r:
            print(f"| {arch} | failed: {r['error'][:80]} | | | | |")
        else:
            print(f"| {arch} | yes | yes | {'yes' if r['served_equals_own'] else 'NO'} | {r['hf_export']} | "
                  f"{r['onnx_max_abs_difference']:.1e} |")
    result = {"cpu": mt.cpu_info(), "architectures": rows}
    if not args.skip_throughput:
        result["onnx_throughput"] = t = onnx_throughput(work, args.rounds)
        print(f"\nMiniLM, {len(t['tasks'])} task heads, batch {t['batch']}, length <= 64, {t['inputs']} SST-2 dev inputs, "
              f"{args.rounds} interleaved rounds (inputs/s, median [min-max]):")
        print("| runtime | inputs/s |\n|---|---|")
        for k in ("pytorch_eager", "onnx_runtime"):
            print(f"| {k} | {t[k]['median']:.1f} [{t[k]['min']:.1f}-{t[k]['max']:.1f}] |")
        r = t["ratio_onnx_over_eager"]
        print(f"| ratio (ONNX / eager) | {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
