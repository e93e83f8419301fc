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

`--big-teacher [DIR]` (off by default) adds the strong teacher of issue 15 to the same interleaved passes (issue 33:
the student's speed against MPNet in fp32 and int8): DIR, or without it all-mpnet-base-v2 (MPNet, 12 layers, 109.5M
parameters) from `mpnet_teacher.assemble_mpnet()`'s folder (the cache bench_mpnet.py uses, `$TMKD_MPNET_DIR` or
~/.cache/tmkd_hf/all-mpnet-base-v2: reused once assembled), loaded with `AutoModelForSequenceClassification`,
`num_labels=2` (a random head, seeded with `--seed`: speed does not depend on training, as for the others). It reads
the SAME pairs in the same order and batches, tokenized by its own tokenizer (MPNet: its own vocabulary, no
token_type_ids), each batch padded to its own longest row, the same `--max-length`. Its rows:

- big_teacher -- the classifier in PyTorch fp32 (in the first table);
- big_teacher_onnx -- saved with its tokenizer in the temporary folder and exported by `tmkd_hf.export.export_onnx`
                (the function the student's rows use): model.onnx (fp32) run by onnxruntime;
- big_teacher_onnx_int8 -- that export's model_int8.onnx with export_onnx's defaults (`weight_type="auto"`: signed
                weights unless they saturate on this CPU, the table says which it kept; per-channel; keep_fp32=());
- big_teacher_onnx_int8_keep_ffn -- the same with `keep_fp32="ffn_output"`: what the labelling backend
                "onnx-int8-ffn-fp32" runs (`tmkd_hf.onnx_teachers` exports a teacher with exactly these arguments).

The exported ones get their own table (file size, the same timings, max |logit difference| and argmax agreement to
big_teacher over every batch, taken from the warm-up pass). The targets table adds the speed-up of every student row
(merged and each exported form) over big_teacher (fp32, PyTorch) and over big_teacher_onnx_int8 (int8, onnxruntime),
and a like-with-like table pairs each big-teacher row with the student row of the same format: merged over
big_teacher (fp32, PyTorch), onnx over big_teacher_onnx (fp32, onnxruntime), and the student's int8 row with the weight
type the big teacher's export kept (QUInt8: onnx_int8, QInt8: onnx_int8_signed; each also with the feed-forward
outputs in fp32) over big_teacher_onnx_int8 (_keep_ffn). `--no-export` leaves the big teacher's exported rows out
too. Without the option the output is the same as before it existed.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_inference.py [--batch-size 32] [--threads 1]
      [--big-teacher [DIR]]
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
BIG = "big_teacher"  # --big-teacher: the strong teacher (all-mpnet-base-v2) in PyTorch fp32
BIG_EXPORTED = {  # name: what it is (the int8 rows add the weight type "auto" kept)
    "big_teacher_onnx": "model.onnx (fp32)",
    "big_teacher_onnx_int8": "model_int8.onnx, export_onnx's defaults (weight_type='auto', per-channel, keep_fp32=())",
    "big_teacher_onnx_int8_keep_ffn": "model_int8.onnx with keep_fp32='ffn_output' (the onnx-int8-ffn-fp32 labelling "
    "backend)",
}
# like with like: the student row of the same format as each big-teacher row (int8: by the weight type kept)
SAME_FORMAT = {
    BIG: ("fp32, PyTorch", {None: "merged"}),
    "big_teacher_onnx": ("fp32, onnxruntime", {None: "onnx"}),
    "big_teacher_onnx_int8": ("int8 {}, onnxruntime", {"QUInt8": "onnx_int8", "QInt8": "onnx_int8_signed"}),
    "big_teacher_onnx_int8_keep_ffn": ("int8 {} with feed-forward outputs in fp32, onnxruntime",
                                       {"QUInt8": "onnx_int8_keep_ffn", "QInt8": "onnx_int8_signed_keep_ffn"}),
}


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


def build_big_teacher(path: str, seed: int):
    """The big teacher as a 2-label classifier (a random head: speed does not depend on training) and its own
    tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, **LABELS).eval()
    return model, AutoTokenizer.from_pretrained(path)


def build_big_exported(model, tokenizer, folder: str, threads: int):
    """{name: callable(batch) -> logits}, {name: size in bytes} and {name: int8 weight type kept (None for fp32)} of
    the big teacher exported by `tmkd_hf.export.export_onnx` with its defaults, as `tmkd_hf.onnx_teachers` exports a
    teacher for labelling (fp32 and int8, and int8 with the feed-forward outputs in fp32). The classifier timed in
    PyTorch is saved with its tokenizer into `folder` first, so the graphs hold the same weights."""
    from tmkd_hf.export import ONNX_FILE, ONNX_INT8_FILE, OnnxClassifier, export_onnx

    source = os.path.join(folder, "big-teacher")
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    plain, keep = os.path.join(folder, "big-teacher-onnx"), os.path.join(folder, "big-teacher-onnx-keep")
    info = {plain: export_onnx(source, plain, quantize=True),
            keep: export_onnx(source, keep, quantize=True, keep_fp32="ffn_output")}  # fmt: skip
    models, sizes, weight_type = {}, {}, {}
    for name, out, file in (("big_teacher_onnx", plain, ONNX_FILE), ("big_teacher_onnx_int8", plain, ONNX_INT8_FILE),
                            ("big_teacher_onnx_int8_keep_ffn", keep, ONNX_INT8_FILE)):  # fmt: skip
        runner = OnnxClassifier(os.path.join(out, file), threads=threads)
        models[name] = lambda batch, runner=runner: torch.from_numpy(runner(**batch))
        sizes[name] = os.path.getsize(os.path.join(out, file))
        weight_type[name] = info[out]["quantization"]["weight_type"] if file == ONNX_INT8_FILE else None
    return models, sizes, weight_type


def encode_batches(encode, tokenizer, raw, max_length: int, batch_size: int):
    """The pairs tokenized by `tokenizer` (with the pipeline's `encode`), in batches each padded to its own longest
    row; and the mean tokens per row."""
    features = encode(tokenizer, raw, list(TEXT_COLUMNS), max_length)
    batches = [tokenizer.pad(features[i : i + batch_size], return_tensors="pt")
               for i in range(0, len(features), batch_size)]
    return batches, sum(len(f["input_ids"]) for f in features) / len(features)


def logit_parity(logits: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    """Max |logit difference| over every batch, and the share of rows whose argmax agrees."""
    pairs = list(zip(logits, reference))
    same = sum(int((x.argmax(-1) == r.argmax(-1)).sum()) for x, r in pairs)
    return max(float((x - r).abs().max()) for x, r in pairs), same / sum(len(r) for r in reference)


@torch.inference_mode()
def warm_up_logits(model, batches: list[dict]) -> list[torch.Tensor]:
    """The warm-up pass of a big-teacher row, keeping its logits (for the exported rows' parity, so no extra pass)."""
    return [model(batch) for batch in batches]


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
    parser.add_argument("--big-teacher", nargs="?", const="", metavar="DIR",
                        help="also time a big teacher (torch fp32, ONNX fp32 and int8) on the same pairs with its own "
                        "tokenizer: DIR, or without it all-mpnet-base-v2 from mpnet_teacher.assemble_mpnet()")
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
    batches, mean_tokens = encode_batches(pipeline.encode, tokenizer, raw, args.max_length, args.batch_size)
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
                export_diff[name], export_agreement[name] = logit_parity([model(b) for b in batches], reference)
    models.update(exported)
    big_exported, big_sizes, big_weight_type, big_diff, big_agreement = {}, {}, {}, {}, {}
    if args.big_teacher is not None:  # the same rows, order and batching, tokenized by the big teacher's tokenizer
        if args.big_teacher:
            big_dir = big_name = args.big_teacher
        else:
            from mpnet_teacher import assemble_mpnet

            big_dir, big_name = assemble_mpnet(), "all-mpnet-base-v2"  # the cache bench_mpnet.py uses
        big_model, big_tokenizer = build_big_teacher(big_dir, args.seed)
        big_batches, big_mean_tokens = encode_batches(pipeline.encode, big_tokenizer, raw, args.max_length,
                                                      args.batch_size)
        models[BIG] = lambda batch: big_model(**batch).logits
        params[BIG] = sum(p.numel() for p in big_model.parameters())
        layers_of[BIG] = big_model.config.num_hidden_layers
        if not args.no_export and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
            big_exported, big_sizes, big_weight_type = build_big_exported(
                big_model, big_tokenizer, export_folder.name, torch.get_num_threads())
        models.update(big_exported)
    big_rows = (BIG, *big_exported) if args.big_teacher is not None else ()
    timed = MODELS + tuple(exported) + big_rows
    inputs = {m: big_batches if m in big_rows else batches for m in timed}
    print(f"{len(raw)} rows, {len(batches)} batches of {args.batch_size}, mean {mean_tokens:.1f} tokens, "
          f"{torch.get_num_threads()} torch threads; load {load_before}", flush=True)
    if big_rows:
        print(f"big teacher {big_name} ({big_model.config.model_type}, {layers_of[BIG]} layers, {params[BIG]:,} "
              f"parameters): its own tokenizer, mean {big_mean_tokens:.1f} tokens, {len(big_batches)} batches",
              flush=True)

    big_logits = {}
    for name in timed:  # warm-up pass (first-call allocations), not timed
        if name in big_rows:
            big_logits[name] = warm_up_logits(models[name], big_batches)
        else:
            timed_pass(models[name], batches)
    for name in big_exported:  # every batch, from the warm-up pass
        big_diff[name], big_agreement[name] = logit_parity(big_logits[name], big_logits[BIG])
    per_batch: dict[str, list[float]] = {m: [] for m in timed}
    passes: dict[str, list[float]] = {m: [] for m in timed}
    for r in range(args.repeats):
        k = r % len(timed)
        for m in timed[k:] + timed[:k]:
            seconds = timed_pass(models[m], inputs[m])
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

    for m in MODELS + big_rows[:1]:
        lines.append(f"| {m} | {params[m]:,} | {layers_of[m]} | {timings(m)} |")
    export_lines = [
        "| exported student | what | size MB | median ms/batch | ms/batch p25-p75 | ms/batch min-max | median pass s "
        "| all passes s | examples/s | max abs logit diff vs merged | argmax agrees with merged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {m} | {EXPORTED[m]} | {sizes[m] / 1e6:.2f} | {timings(m)} | {export_diff[m]:.1e} "
          f"| {export_agreement[m]:.3f} |" for m in exported],
    ] if exported else []  # fmt: skip

    def big_what(m: str) -> str:
        kept = big_weight_type[m]
        return BIG_EXPORTED[m] + (f"; kept {kept} on this CPU" if kept else "") + ", onnxruntime"

    big_export_lines = [
        "| exported big teacher | what | size MB | median ms/batch | ms/batch p25-p75 | ms/batch min-max "
        "| median pass s | all passes s | examples/s | max abs logit diff vs big_teacher "
        "| argmax agrees with big_teacher |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {m} | {big_what(m)} | {big_sizes[m] / 1e6:.2f} | {timings(m)} | {big_diff[m]:.1e} "
          f"| {big_agreement[m]:.3f} |" for m in big_exported],
    ] if big_exported else []  # fmt: skip
    like_lines = []
    for b in big_rows:  # each big-teacher row against the student row of the same format
        fmt, student_of = SAME_FORMAT[b]
        kept = big_weight_type.get(b)
        student = student_of.get(kept)
        if student in median_pass:
            like_lines.append(f"| {fmt.format(kept)} | {student} | {b} | {len(raw) / median_pass[student]:.1f} "
                              f"| {len(raw) / median_pass[b]:.1f} | {median_pass[b] / median_pass[student]:.2f}x |")
    if like_lines:
        like_lines[:0] = ["| like with like | student | big teacher | student examples/s | big teacher examples/s "
                          "| speed-up of the student |", "|---|---|---|---|---|---|"]  # fmt: skip
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
    if big_rows:  # every student row over the big teacher in fp32 (PyTorch) and in int8 (onnxruntime)
        for m in ("merged", *exported):
            checks.append((f"speed-up of {m} over {BIG} (fp32, PyTorch)", f"{median_pass[BIG] / median_pass[m]:.2f}x",
                           None))  # fmt: skip
            if "big_teacher_onnx_int8" in big_exported:
                value = median_pass["big_teacher_onnx_int8"] / median_pass[m]
                checks.append((f"speed-up of {m} over big_teacher_onnx_int8 (int8, onnxruntime)", f"{value:.2f}x",
                               None))  # fmt: skip
        for m in big_exported:
            checks.append((f"max abs diff of logits, {m} vs {BIG} (info)", f"{big_diff[m]:.1e}", None))
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
        + (f"; onnxruntime on {torch.get_num_threads()} threads" if "onnx" in exported else "")
        + (f"; big teacher: {big_name} ({big_model.config.model_type}, {layers_of[BIG]} layers, random 2-label head), "
           f"the same pairs and batches tokenized by its own tokenizer (mean {big_mean_tokens:.1f} tokens)"
           if big_rows else ""),
        "",
        *lines,
        "",
        *([*export_lines, ""] if export_lines else []),
        *([*big_export_lines, ""] if big_export_lines else []),
        *([*like_lines, ""] if like_lines else []),
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
