"""Inference latency and throughput of the merged TMKD student against one teacher, the ensemble and a plain model.

Models (all from all-MiniLM-L6-v2, `num_labels=2`; speed does not depend on what they learnt, so nothing is trained):

- merged     -- a `MultiHeadStudent` with 3 heads on layers 0, 1, 2 (`student_from_teacher_layers`), heads made
                different, then `merge_heads()`: the plain checkpoint TMKD publishes;
- plain      -- the same architecture with its one ordinary head (what fine-tuning the small model gives);
- teacher    -- one full 6-layer teacher;
- ensemble   -- the 3 teachers run one after the other on each batch, probabilities averaged;

and the merged student exported for inference (`tmkd_hf.export`, saved and exported in a temporary folder):

- onnx       -- `model.onnx` (fp32, the whole classifier in one graph) run by onnxruntime;
- onnx_int8  -- `model_int8.onnx` (onnxruntime dynamic quantization, per-channel QUInt8 weights, `weight_type="uint8"`)
                run by onnxruntime;
- onnx_int8_signed -- the same with signed weights (`export_onnx(weight_type="int8")`, onnxruntime's U8S8 kernels:
                the faster kernels, can saturate on AVX2-only CPUs; `weight_type="auto"`, the default, keeps them
                unless they do);
- onnx_int8_keep_ffn -- `keep_fp32="ffn_output"`: the same with every block's second feed-forward layer in fp32
                (what it buys in accuracy on trained models: `bench_quantization.py`);
- onnx_int8_signed_keep_ffn -- both: signed weights, the feed-forward outputs in fp32;
- onnx_fused, onnx_fused_int8, onnx_fused_int8_keep_ffn -- exported with `optimize=True` (onnxruntime's transformer
                optimizer fuses attention, embeddings, LayerNorms and GELU; onnxruntime-only operators);
- torch_int8 -- `quantize_torch_int8(merged)` (torch dynamic quantization of every nn.Linear, per-channel weights).

The same inputs for every model (the first `--rows` pairs of qnli/test.tsv, file order, batches of `--batch-size`,
each padded to its own longest row), `torch.inference_mode()`, one warm-up pass, then `--repeats` passes per model,
interleaved (order rotated every repeat), in ONE process. Reported per model: median latency per batch with its
spread (25th-75th percentile, min-max, over all batches of all passes), throughput (rows / median pass time), and
the ratios merged/plain (target <= 1.02), teacher/merged and ensemble/merged. The merged student's logits are checked
against the multi-head student's combined logits. The exported rows are timed in the same interleaved passes
(onnxruntime on torch's thread count) and get their own table: file size, the same timings, their max |logit
difference| to the merged student in PyTorch over every batch (target for fp32 ONNX: <= 1e-4) and argmax agreement,
and their speed-ups over one teacher, the ensemble and the merged student; the fastest of them is held to the
deployment targets (>= 10x the ensemble, >= 3.5x one teacher). Without onnxruntime only torch_int8 is timed
(`pip install "tmkd_hf[onnx]"`); `--no-export` leaves the exported rows out. Accuracy after quantization needs a
trained student: the pipeline's `--export_onnx true` measures it on QNLI.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_inference.py [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
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

from bench_labelling import RESULTS, code_version, command_line, load_average, machine, minilm_dir  # noqa: E402
from bench_training import LABELS, TEXT_COLUMNS, data_dir  # noqa: E402

MODELS = ("merged", "plain", "teacher", "ensemble")
EXPORTED = {  # name: what it is
    "onnx": "model.onnx (fp32), onnxruntime",
    "onnx_int8": "model_int8.onnx (per-channel QUInt8 weights, dynamic quantization, keep_fp32=()), onnxruntime",
    "onnx_int8_keep_ffn": "model_int8.onnx with keep_fp32='ffn_output' (feed-forward outputs in fp32), onnxruntime",
    "onnx_int8_signed": "model_int8.onnx with weight_type='int8' (per-channel QInt8 weights), onnxruntime",
    "onnx_int8_signed_keep_ffn": "the same with keep_fp32='ffn_output', onnxruntime",
    "onnx_fused": "model.onnx exported with optimize=True (fused transformer blocks), onnxruntime",
    "onnx_fused_int8": "model_int8.onnx exported with optimize=True (fused, then per-channel QUInt8), onnxruntime",
    "onnx_fused_int8_keep_ffn": "the same with keep_fp32='ffn_output', onnxruntime",
    "torch_int8": "quantize_torch_int8: torch dynamic int8 nn.Linear (per-channel weights)",
}
ONNX_TOLERANCE = 1e-4  # max |logit difference| of the fp32 graph to the merged student in PyTorch
DEPLOY_TARGETS = {"ensemble": 10.0, "teacher": 3.5}  # the fastest exported student's speed-up over these (issue 14)


def build_models(backbone: str, layers: list[int], teachers: int, seed: int):
    """{name: callable(batch) -> logits}, the multi-head student, its merged copy, parameter and layer counts."""
    from transformers import AutoModelForSequenceClassification

    from tmkd_hf import MultiHeadStudent, student_from_teacher_layers

    torch.manual_seed(seed)
    base = student_from_teacher_layers(backbone, layers=layers, **LABELS)
    plain = student_from_teacher_layers(backbone, layers=layers, **LABELS).eval()
    plain.load_state_dict(base.state_dict())
    multi = MultiHeadStudent(base, num_heads=teachers)
    with torch.no_grad():  # heads that differ, as after training (merging equal heads would prove little)
        for p in multi.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    multi.eval()
    merged = multi.merge_heads().eval()
    teacher_models = []
    for s in range(1, teachers + 1):
        torch.manual_seed(s)
        teacher_models.append(AutoModelForSequenceClassification.from_pretrained(backbone, **LABELS).eval())

    def ensemble(batch):
        return torch.stack([m(**batch).logits.softmax(-1) for m in teacher_models]).mean(0)

    models = {
        "merged": lambda batch: merged(**batch).logits,
        "plain": lambda batch: plain(**batch).logits,
        "teacher": lambda batch: teacher_models[0](**batch).logits,
        "ensemble": ensemble,
    }
    params = {
        "merged": sum(p.numel() for p in merged.parameters()),
        "plain": sum(p.numel() for p in plain.parameters()),
        "teacher": sum(p.numel() for p in teacher_models[0].parameters()),
    }
    params["ensemble"] = teachers * params["teacher"]
    layers_of = {"merged": len(layers), "plain": len(layers), "teacher": teacher_models[0].config.num_hidden_layers}
    layers_of["ensemble"] = f"{teachers} x {layers_of['teacher']}"
    return models, multi, merged, params, layers_of


def build_exported(multi, merged, tokenizer, folder: str, threads: int):
    """{name: callable(batch) -> logits} and {name: size in bytes} of the merged student exported for inference:
    ONNX fp32 and int8 (when onnxruntime is installed) and torch int8. `multi` is saved merged into `folder` first,
    as a user would export it."""
    from tmkd_hf.export import ONNX_FILE, ONNX_INT8_FILE, OnnxClassifier, export_onnx, quantize_torch_int8

    torch_int8 = quantize_torch_int8(merged)
    buffer = io.BytesIO()
    torch.save(torch_int8.state_dict(), buffer)
    models = {"torch_int8": lambda batch: torch_int8(**batch).logits}
    sizes = {"torch_int8": buffer.tell()}
    if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        print('onnxruntime is not installed: no ONNX rows (pip install "tmkd_hf[onnx]")', flush=True)
        return models, sizes
    student_dir, onnx_dir = os.path.join(folder, "student"), os.path.join(folder, "onnx")
    multi.save_pretrained(student_dir, merged=True, tokenizer=tokenizer)
    dirs = {k: os.path.join(folder, f"onnx-{k}") for k in ("signed", "signed-keep", "fused", "keep", "fused-keep")}
    export_onnx(student_dir, onnx_dir, quantize=True, weight_type="uint8", keep_fp32=())
    export_onnx(student_dir, dirs["keep"], quantize=True, weight_type="uint8", keep_fp32="ffn_output")
    export_onnx(student_dir, dirs["signed"], quantize=True, weight_type="int8", keep_fp32=())
    export_onnx(student_dir, dirs["signed-keep"], quantize=True, weight_type="int8", keep_fp32="ffn_output")
    export_onnx(student_dir, dirs["fused"], quantize=True, weight_type="uint8", optimize=True, keep_fp32=())
    export_onnx(student_dir, dirs["fused-keep"], quantize=True, weight_type="uint8", optimize=True,
                keep_fp32="ffn_output")
    for name, file in (("onnx", os.path.join(onnx_dir, ONNX_FILE)),
                       ("onnx_int8", os.path.join(onnx_dir, ONNX_INT8_FILE)),
                       ("onnx_int8_keep_ffn", os.path.join(dirs["keep"], ONNX_INT8_FILE)),
                       ("onnx_int8_signed", os.path.join(dirs["signed"], ONNX_INT8_FILE)),
                       ("onnx_int8_signed_keep_ffn", os.path.join(dirs["signed-keep"], ONNX_INT8_FILE)),
                       ("onnx_fused", os.path.join(dirs["fused"], ONNX_FILE)),
                       ("onnx_fused_int8", os.path.join(dirs["fused"], ONNX_INT8_FILE)),
                       ("onnx_fused_int8_keep_ffn", os.path.join(dirs["fused-keep"], ONNX_INT8_FILE))):
        runner = OnnxClassifier(file, threads=threads)
        models[name] = lambda batch, runner=runner: torch.from_numpy(runner(**batch))
        sizes[name] = os.path.getsize(file)
    return {name: models[name] for name in EXPORTED if name in models}, sizes


@torch.inference_mode()
def timed_pass(model, batches: list[dict]) -> list[float]:
    """Seconds per batch of one pass over `batches`."""
    out = []
    for batch in batches:
        start = time.perf_counter()
        model(batch)
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=824, help="first N pairs of qnli/test.tsv (824: all of it)")
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--teachers", type=int, default=3, help="teachers in the ensemble (= student heads)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--backbone", help="model dir for teachers and student (default: all-MiniLM-L6-v2)")
    parser.add_argument("--student-layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-export", action="store_true", help="leave out the exported rows (ONNX, torch int8)")
    parser.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import run_tmkd_pipeline as pipeline
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    command = command_line(__file__, argv)
    load_before = load_average()
    backbone = args.backbone or minilm_dir()
    raw = pipeline.read_tsv(str(data_dir() / "test.tsv"), list(TEXT_COLUMNS), args.rows)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    features = pipeline.encode(tokenizer, raw, list(TEXT_COLUMNS), args.max_length)
    batches = [tokenizer.pad(features[i : i + args.batch_size], return_tensors="pt")
               for i in range(0, len(features), args.batch_size)]
    mean_tokens = sum(len(f["input_ids"]) for f in features) / len(features)
    models, multi, merged, params, layers_of = build_models(backbone, args.student_layers, args.teachers, args.seed)
    with torch.inference_mode():
        merge_diff = max(float((multi(**b).logits - merged(**b).logits).abs().max()) for b in batches[:2])
    exported, sizes, export_diff, export_agreement = {}, {}, {}, {}
    export_folder = tempfile.TemporaryDirectory(prefix="bench-inference-export-")
    if not args.no_export:
        exported, sizes = build_exported(multi, merged, tokenizer, export_folder.name, torch.get_num_threads())
        with torch.inference_mode():  # every batch, outside the timed passes
            reference = [merged(**b).logits for b in batches]
            for name, model in exported.items():
                logits = [model(b) for b in batches]
                export_diff[name] = max(float((x - r).abs().max()) for x, r in zip(logits, reference))
                same = sum(int((x.argmax(-1) == r.argmax(-1)).sum()) for x, r in zip(logits, reference))
                export_agreement[name] = same / len(features)
    models.update(exported)
    timed = MODELS + tuple(exported)
    print(f"{len(raw)} rows, {len(batches)} batches of {args.batch_size}, mean {mean_tokens:.1f} tokens, "
          f"{torch.get_num_threads()} torch threads; load {load_before}", flush=True)

    for name in timed:  # warm-up pass (first-call allocations), not timed
        timed_pass(models[name], batches)
    per_batch: dict[str, list[float]] = {m: [] for m in timed}
    passes: dict[str, list[float]] = {m: [] for m in timed}
    for r in range(args.repeats):
        k = r % len(timed)
        for m in timed[k:] + timed[:k]:
            seconds = timed_pass(models[m], batches)
            per_batch[m] += seconds
            passes[m].append(sum(seconds))
            print(f"  repeat {r + 1}: {m:10s} pass {passes[m][-1]:7.2f} s (load {load_average()})", flush=True)

    median_pass = {m: statistics.median(passes[m]) for m in timed}
    lines = [
        "| model | parameters | layers | median ms/batch | ms/batch p25-p75 | ms/batch min-max | median pass s "
        "| all passes s | examples/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def timings(m: str) -> str:
        ms = 1000 * np.asarray(per_batch[m])
        p25, p50, p75 = np.percentile(ms, [25, 50, 75])
        return (f"{p50:.1f} | {p25:.1f}-{p75:.1f} | {ms.min():.1f}-{ms.max():.1f} | {median_pass[m]:.3f} "
                f"| {', '.join(f'{s:.3f}' for s in passes[m])} | {len(raw) / median_pass[m]:.1f}")

    for m in MODELS:
        lines.append(f"| {m} | {params[m]:,} | {layers_of[m]} | {timings(m)} |")
    export_lines = [
        "| exported student | what | size MB | median ms/batch | ms/batch p25-p75 | ms/batch min-max | median pass s "
        "| all passes s | examples/s | max abs logit diff vs merged | argmax agrees with merged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {m} | {EXPORTED[m]} | {sizes[m] / 1e6:.2f} | {timings(m)} | {export_diff[m]:.1e} "
          f"| {export_agreement[m]:.3f} |" for m in exported],
    ] if exported else []  # fmt: skip
    ratio = median_pass["merged"] / median_pass["plain"]
    # the same ratio from each batch's fastest time over the passes (least disturbed by other jobs)
    best = {m: np.asarray(per_batch[m]).reshape(args.repeats, -1).min(0).sum() for m in MODELS}
    checks = [
        ("merged / plain time per pass (median) <= 1.02", f"{ratio:.3f}", ratio <= 1.02),
        ("merged / plain, sum of per-batch best times (info)", f"{best['merged'] / best['plain']:.3f}", None),
        ("speed-up of merged over one teacher", f"{median_pass['teacher'] / median_pass['merged']:.2f}x", None),
        ("speed-up of merged over the ensemble", f"{median_pass['ensemble'] / median_pass['merged']:.2f}x", None),
        ("max abs diff of logits, merged vs multi-head <= 1e-5", f"{merge_diff:.1e}", merge_diff <= 1e-5),
    ]
    for m in exported:
        checks += [
            (f"speed-up of {m} over one teacher", f"{median_pass['teacher'] / median_pass[m]:.2f}x", None),
            (f"speed-up of {m} over the ensemble", f"{median_pass['ensemble'] / median_pass[m]:.2f}x", None),
            (f"speed-up of {m} over merged (info)", f"{median_pass['merged'] / median_pass[m]:.2f}x", None),
        ]
    for m in ("onnx", "onnx_fused"):
        if m in exported:
            checks.append((f"max abs diff of logits, {m} vs merged <= {ONNX_TOLERANCE:g}", f"{export_diff[m]:.1e}",
                           export_diff[m] <= ONNX_TOLERANCE))  # fmt: skip
    for m in ("onnx_int8", "onnx_int8_keep_ffn", "onnx_int8_signed", "onnx_int8_signed_keep_ffn", "onnx_fused_int8",
              "onnx_fused_int8_keep_ffn", "torch_int8"):
        if m in exported:
            checks.append((f"max abs diff of logits, {m} vs merged (info)", f"{export_diff[m]:.1e}", None))
    if exported:  # the deployed student: the fastest exported form
        fastest = min(exported, key=lambda m: median_pass[m])
        for base, bound in DEPLOY_TARGETS.items():
            value = median_pass[base] / median_pass[fastest]
            name = "the ensemble" if base == "ensemble" else "one teacher"
            checks.append((f"fastest exported ({fastest}) over {name} >= {bound:g}x", f"{value:.2f}x",
                           value >= bound))
    report = [
        f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — inference speed (bench_inference.py)",
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_average()}",
        f"- command: `{command}`",
        f"- code: tmkd_hf at {code_version()}",
        f"- data: first {len(raw)} pairs of qnli/test.tsv in file order (mean {mean_tokens:.1f} tokens), "
        f"{len(batches)} batches of {args.batch_size} padded per batch, max_length {args.max_length}; 1 warm-up "
        f"pass, then {args.repeats} interleaved passes per model; student: layers {args.student_layers} of "
        f"{'MiniLM-L6' if not args.backbone else args.backbone}, {args.teachers} heads merged"
        + (f"; onnxruntime on {torch.get_num_threads()} threads" if "onnx" in exported else ""),
        "",
        *lines,
        "",
        *([*export_lines, ""] if export_lines else []),
        "| target | value | met |",
        "|---|---|---|",
        *[f"| {n} | {v} | {'-' if ok is None else ('yes' if ok else 'NO')} |" for n, v, ok in checks],
        "",
    ]
    text = "\n".join(report)
    print("\n" + text)
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write(text + "\n")
    export_folder.cleanup()
    fp32_ok = all(export_diff.get(m, 0.0) <= ONNX_TOLERANCE for m in ("onnx", "onnx_fused"))
    return 0 if merge_diff <= 1e-5 and fp32_ok else 1


if __name__ == "__main__":
    sys.exit(main())
