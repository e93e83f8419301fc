"""Accuracy after int8, on TRAINED classifiers: what each export route costs in test accuracy, on the same rows.

`bench_inference.py` times the exported formats on a student with untrained heads (speed does not depend on what a
model learnt; accuracy does). This script takes trained classifiers (`--models`: teachers or students saved by the
recipes, the pipeline or `bench_ablation.py`, anything `tmkd_hf.load_classifier` loads, with their tokenizer),
exports each once per route into a temporary folder and scores every format on the same rows of QNLI test (or
`--data`):

- torch fp32     -- the classifier in PyTorch (the reference);
- onnx fp32      -- `export_onnx(...)`'s `model.onnx`;
- int8           -- `model_int8.onnx` as `export_onnx(quantize=True)` makes it by default;
- int8 all       -- every weight MatMul in 8 bits (`keep_fp32=()`), unsigned weights (`weight_type="uint8"`);
- int8 keep ffn  -- `keep_fp32="ffn_output"`: every block's second feed-forward layer left in fp32, unsigned weights;
- int8 signed    -- `weight_type="int8"` (U8S8 kernels; can saturate on AVX2-only CPUs), all in 8 bits;
- int8 signed keep ffn -- both: signed weights, the feed-forward outputs in fp32;
- torch int8     -- `quantize_torch_int8` (torch dynamic int8 of every nn.Linear).

Reported per model and format: test accuracy, points lost against torch fp32, argmax agreement with torch fp32 (in
%: the rows whose prediction changed are what the accuracy difference is made of) and the largest |logit
difference|; then the mean loss of each format over the models against the <= 0.5-point target. Rows run longest
first in batches of `--batch-size`, as the pipeline evaluates.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_quantization.py \
          --models outputs/ablation-qnli-l012/teachers/teacher_{0,1,2}
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

from bench_labelling import DATA_ROOT, RESULTS, code_version, command_line, load_average, machine  # noqa: E402

TARGET_POINTS = 0.5  # issue 14: int8 accuracy on test within 0.5 points of fp32
# format -> export_onnx arguments (None: not an ONNX file)
FORMATS = {
    "torch fp32": None,
    "onnx fp32": {},
    "int8": {"quantize": True},
    "int8 all": {"quantize": True, "weight_type": "uint8", "keep_fp32": ()},
    "int8 keep ffn": {"quantize": True, "weight_type": "uint8", "keep_fp32": "ffn_output"},
    "int8 signed": {"quantize": True, "weight_type": "int8", "keep_fp32": ()},
    "int8 signed keep ffn": {"quantize": True, "weight_type": "int8", "keep_fp32": "ffn_output"},
    "torch int8": None,
}


def load_rows(path: Path, max_rows: int | None):
    import run_tmkd_pipeline as pipeline

    return pipeline.read_tsv(str(path), ["question", "sentence", "label"], max_rows)


def label_order(config, label_names: list[str]) -> np.ndarray:
    """Index into the data's sorted label names of each of the model's outputs; a clear error when they differ."""
    names = [config.id2label[i] for i in range(config.num_labels)]
    if sorted(names) != sorted(label_names):
        raise SystemExit(f"the model predicts {names}, the data's labels are {label_names}")
    return np.array([label_names.index(n) for n in names])


def score(model_dir: str, rows, batch_size: int, formats: list[str], work: Path) -> dict[str, dict]:
    import run_tmkd_pipeline as pipeline
    from transformers import AutoTokenizer

    from tmkd_hf.export import ONNX_INT8_FILE, OnnxClassifier, export_onnx, quantize_torch_int8
    from tmkd_hf.teachers import load_classifier

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_classifier(model_dir).float().eval()
    label_names = sorted(set(rows["label"]))
    order = label_order(model.config, label_names)
    labels = np.array([label_names.index(v) for v in rows["label"]])
    features = pipeline.encode(tokenizer, rows, ["question", "sentence"], 128)
    threads = torch.get_num_threads()

    def predict(runner) -> np.ndarray:
        return pipeline.predict_logits(runner, tokenizer, features, batch_size)

    logits, sizes, default_kept, default_weights = {}, {}, None, None
    for name in formats:
        if name == "torch fp32":
            logits[name] = predict(model)
        elif name == "torch int8":
            logits[name] = predict(quantize_torch_int8(model))
        else:
            folder = work / name.replace(" ", "_")
            info = export_onnx(model_dir, folder, **FORMATS[name])
            path = folder / (ONNX_INT8_FILE if FORMATS[name].get("quantize") else "model.onnx")
            logits[name] = predict(pipeline.OnnxStudent(OnnxClassifier(path, threads=threads), model.config))
            sizes[name] = path.stat().st_size / 1e6
            if name == "int8":
                default_kept = info["quantization"]["kept_fp32"]["requested"]
                default_weights = info["quantization"]["weight_type"]  # what weight_type="auto" chose here
    reference = logits["torch fp32"]
    result = {
        name: {
            "accuracy": float((order[logits[name].argmax(-1)] == labels).mean()),
            "agreement": float((logits[name].argmax(-1) == reference.argmax(-1)).mean()),
            "max_diff": float(np.abs(logits[name] - reference).max()),
            "size_mb": sizes.get(name),
        }
        for name in formats
    }
    result["_default_keep_fp32"] = default_kept
    result["_default_weight_type"] = default_weights
    return result


def build_table(results: dict[str, dict], formats: list[str]) -> str:
    lines = ["| model | format | file MB | test acc | points lost vs torch fp32 | argmax agrees (%) | max abs logit "
             "diff |", "|---|---|---|---|---|---|---|"]
    for model, by_format in results.items():
        base = by_format["torch fp32"]["accuracy"]
        for name in formats:
            r = by_format[name]
            size = f"{r['size_mb']:.3g}" if r["size_mb"] else ""
            lost = 100 * (base - r["accuracy"])
            lines.append(f"| {model} | {name} | {size} | {100 * r['accuracy']:.2f} | {lost:+.2f} "
                         f"| {100 * r['agreement']:.1f} | {r['max_diff']:.3f} |")
    lines += ["", f"| format | points lost, each model | mean | mean argmax agreement (%) | mean <= {TARGET_POINTS} |",
              "|---|---|---|---|---|"]
    for name in formats[1:]:
        lost = [100 * (r["torch fp32"]["accuracy"] - r[name]["accuracy"]) for r in results.values()]
        agree = statistics.mean(100 * r[name]["agreement"] for r in results.values())
        mean = statistics.mean(lost)
        lines.append(f"| {name} | {' / '.join(f'{v:+.2f}' for v in lost)} | {mean:+.2f} | {agree:.1f} | "
                     f"{'yes' if mean <= TARGET_POINTS else 'NO'} |")
    first = next(iter(results.values()))
    chosen = ", ".join(f"{model}: {r.get('_default_weight_type')}" for model, r in results.items())
    kept = first["_default_keep_fp32"] or "nothing"
    lines += ["", f"`int8` is `export_onnx(quantize=True)`'s default, which keeps {kept} in fp32 and whose "
              f"`weight_type=\"auto\"` chose, on this CPU, {chosen}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="trained classifier dirs (with their tokenizer)")
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "qnli" / "test.tsv",
                        help="a TSV with question, sentence, label (default: qnli/test.tsv)")
    parser.add_argument("--max-rows", type=int, help="quick check: first N rows")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the table to {RESULTS.name}")
    args = parser.parse_args(argv)
    formats = ["torch fp32", *[f for f in args.formats if f != "torch fp32"]]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    for model in args.models:
        if not os.path.isdir(model):
            raise SystemExit(f"--models: {model} is not a directory")
    rows = load_rows(args.data, args.max_rows)
    started, load_before = time.perf_counter(), load_average()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, model in enumerate(args.models):
            name = os.path.basename(os.path.normpath(model))
            name = name if name not in results else f"{name} ({i})"
            results[name] = score(model, rows, args.batch_size, formats, Path(tmp) / str(i))
            print(f"{name}: " + ", ".join(f"{f} {100 * r['accuracy']:.2f}" for f, r in results[name].items()
                                          if isinstance(r, dict)), flush=True)
    table = build_table(results, formats)
    print(table)
    if not args.no_record:
        command = command_line(__file__, argv)
        report = [f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — accuracy after int8 on trained classifiers "
                  "(bench_quantization.py)", "",
                  f"- machine: {machine()}; load average {load_before} at the start, {load_average()} at the end; "
                  f"{(time.perf_counter() - started) / 60:.1f} min",
                  f"- command: `{command}`", f"- data: {len(rows)} rows of `{args.data.name}` "
                  f"({args.data.parent.name}), batch {args.batch_size}, longest first",
                  f"- code: tmkd_hf at {code_version()}", "", table]
        with RESULTS.open("a") as f:
            f.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
