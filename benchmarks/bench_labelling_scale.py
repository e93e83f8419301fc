"""Labelling at scale (issue 32): teacher backends side by side, and the cost curve as the pool grows.

Backends (`--backends`, the default): on the first `--rows` pairs of the SQuAD pool (`../shared/data/squad_pool`,
real question-sentence pairs from other articles than the evaluation data), per teacher (all-MiniLM-L6-v2 and
all-mpnet-base-v2 with seeded random 2-way heads: the speed and the int8 error of the encoder, not of a trained
head), `label_with_teachers` is run in ONE process, methods interleaved and repeated (rotating order), each step
of the way from what a user had to what we ship:

1. torch fp32, rows in file order (each batch padded to its longest row);
2. torch fp32, rows sorted by length within each shard (the library's torch backend);
3. onnx fp32 (`backend="onnx"`: the teacher exported once by `export_onnx`, run by onnxruntime, sorted rows);
4. onnx int8 (`backend="onnx-int8"`: 8-bit weights, dynamic quantization, signed unless it saturates here).

Each run includes tokenization and loading the teacher (or its onnxruntime session), as a user's run does; the
exports are made before the timing (once per teacher, cached). Reported: pairs/s (median over repeats), the ratio to
torch fp32 sorted and to torch fp32 unsorted, and the logits' max and mean |difference| to torch fp32.

`--profile`: where an int8 teacher's time goes (onnxruntime's per-operator profile, summed by operator type).

Cost curve (`--curve 1 2 4`): `label_with_teachers` on the first k shards of the pool, each k in a fresh subprocess
with a fresh output directory (the exports shared), backend `--curve-backend`, one teacher (`--curve-teacher`):
wall time, rows/s and peak RSS (VmHWM, and RssAnon sampled every 50 ms). Time should grow linearly with the rows
and peak RSS stay flat.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_labelling_scale.py --rows 1024 --repeats 2
      HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_labelling_scale.py --skip-backends --curve 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tmkd_hf.onnx_teachers import BACKENDS, export_dir
from tmkd_hf.teachers import TeacherSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_labelling import DATA_ROOT, RESULTS, PeakAnonSampler, load_average, minilm_dir, status_kb  # noqa: E402

POOL = DATA_ROOT / "squad_pool"
TEXT_COLUMNS = ("question", "sentence")
METHODS = {  # name: (backend, sorted by length)
    "torch fp32 unsorted": ("torch", False),
    "torch fp32": ("torch", True),
    "onnx fp32": ("onnx", True),
    "onnx int8": ("onnx-int8", True),
}
RUNS_DIR = Path(__file__).resolve().parent / "runs" / "labelling-scale"


def pool_files(k: int | None = None) -> list[str]:
    files = sorted(str(p) for p in POOL.glob("pool-*-of-10.tsv.gz"))
    if not files:
        raise SystemExit(f"No pool shards in {POOL}: this benchmark reads ../shared/data/squad_pool.")
    return files if k is None else files[:k]


def save_teacher(source: str, path: Path, seed: int = 0) -> str:
    """A sequence classifier on `source`'s encoder with a seeded random 2-way head, saved with its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (path / "config.json").is_file():
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return str(path)


def teachers(work: Path, names: list[str]) -> dict[str, str]:
    out = {}
    if "minilm" in names:
        out["MiniLM-L6 (22.7M)"] = save_teacher(minilm_dir(), work / "teacher-minilm")
    if "mpnet" in names:
        from mpnet_teacher import assemble_mpnet

        out["MPNet-base (109.5M)"] = save_teacher(str(assemble_mpnet()), work / "teacher-mpnet")
    return out


def label(dataset, teacher: str, backend: str, sort: bool, onnx_dir: Path, batch_size: int, max_length: int):
    import tmkd_hf.labelling as labelling
    from tmkd_hf import label_with_teachers

    labelling._SORT_BY_LENGTH = sort  # internal switch, measured here
    try:
        start = time.perf_counter()
        labelled = label_with_teachers(dataset, [teacher], backend=backend, onnx_dir=onnx_dir, batch_size=batch_size,
                                       max_length=max_length, show_progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        labelling._SORT_BY_LENGTH = True
    return seconds, np.asarray(labelled.with_format("numpy")["teacher_logits"])[:, 0]


def run_backends(args, work: Path) -> dict:
    import transformers
    from datasets import Dataset, disable_progress_bars

    from tmkd_hf.pool import read_data_file

    disable_progress_bars()
    transformers.logging.set_verbosity_error()
    pool = read_data_file(pool_files(1)[0], TEXT_COLUMNS, work / "pool-00.arrow")
    dataset = Dataset.from_dict({c: list(pool[c][: args.rows]) for c in TEXT_COLUMNS})
    onnx_dir = work / "onnx"
    results = {}
    for name, path in teachers(work, args.teachers).items():
        print(f"[{name}] exporting (not timed) and warming up ...", flush=True)
        small = dataset.select(range(min(64, len(dataset))))
        for backend, sort in METHODS.values():
            label(small, path, backend, sort, onnx_dir, args.batch_size, args.max_length)
        seconds = {m: [] for m in METHODS}
        logits = {}
        methods = list(METHODS)
        for r in range(args.repeats):
            for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
                backend, sort = METHODS[method]
                s, logits[method] = label(dataset, path, backend, sort, onnx_dir, args.batch_size, args.max_length)
                seconds[method].append(s)
                print(f"  repeat {r + 1}: {method:20s} {len(dataset) / s:7.1f} pairs/s (load {load_average()})",
                      flush=True)  # fmt: skip
        reference = logits["torch fp32"]
        export = export_dir(onnx_dir, TeacherSpec.parse(path).identity())  # where label() exported it
        export_info = json.loads((export / "onnx_export.json").read_text())
        results[name] = {
            "teacher": path,
            "pairs_per_s": {m: len(dataset) / statistics.median(s) for m, s in seconds.items()},
            "seconds": seconds,
            "max_abs_diff": {m: float(np.abs(v - reference).max()) for m, v in logits.items()},
            "mean_abs_diff": {m: float(np.abs(v - reference).mean()) for m, v in logits.items()},
            "argmax_agreement": {m: float((v.argmax(-1) == reference.argmax(-1)).mean()) for m, v in logits.items()},
            "int8_weight_type": (export_info.get("quantization") or {}).get("weight_type"),
        }
    return {"rows": len(dataset), "mean_tokens": mean_tokens(dataset, args.max_length), "teachers": results}


def mean_tokens(dataset, max_length: int) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    enc = tok(list(dataset["question"]), list(dataset["sentence"]), truncation=True, max_length=max_length)
    return float(np.mean([len(x) for x in enc["input_ids"]]))


def profile_int8(args, work: Path) -> dict:
    """onnxruntime's own profile of the int8 teachers on the benchmark rows: milliseconds per operator type."""
    import onnxruntime as ort
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tmkd_hf.pool import read_data_file

    pool = read_data_file(pool_files(1)[0], TEXT_COLUMNS, work / "pool-00.arrow")
    dataset = Dataset.from_dict({c: list(pool[c][: args.rows]) for c in TEXT_COLUMNS})
    out = {}
    for name, path in teachers(work, args.teachers).items():
        folder = export_dir(work / "onnx", TeacherSpec.parse(path).identity())
        tok = AutoTokenizer.from_pretrained(path)
        for file in ("model.onnx", "model_int8.onnx"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.enable_profiling = True
            options.profile_file_prefix = str(work / f"profile-{folder.name}-{file}")
            session = ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            questions, sentences = list(dataset["question"]), list(dataset["sentence"])
            encoded = tok(questions, sentences, truncation=True, max_length=args.max_length)
            lengths = [len(x) for x in encoded["input_ids"]]
            order = np.argsort(lengths)[::-1]
            for start in range(0, len(order), args.batch_size):
                idx = order[start : start + args.batch_size]
                enc = tok([questions[i] for i in idx], [sentences[i] for i in idx], truncation=True,
                          max_length=args.max_length, padding=True, return_tensors="np")  # fmt: skip
                session.run(None, {n: enc[n].astype(np.int64) for n in names})
            trace = json.loads(Path(session.end_profiling()).read_text())
            by_op: dict[str, float] = {}
            for event in trace:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    op = event.get("args", {}).get("op_name", "?")
                    by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1000
            total = sum(by_op.values())
            top = [(op, ms, ms / total) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]]
            out[f"{name} {file}"] = {"total_ms": total, "top": top}
            print(f"[profile] {name} {file}: {total:.0f} ms in kernels; " + ", ".join(
                f"{op} {100 * share:.0f}%" for op, _, share in top[:5]), flush=True)  # fmt: skip
    return out


# ----- the cost curve -----


def curve_child(k: int, teacher: str, backend: str, out: str, onnx_dir: str, batch_size: int) -> None:
    import transformers
    from datasets import disable_progress_bars

    from tmkd_hf import label_with_teachers

    disable_progress_bars()
    transformers.logging.set_verbosity_error()
    with PeakAnonSampler() as peak:
        start = time.perf_counter()
        labelled = label_with_teachers(pool_files(k), [teacher], backend=backend, onnx_dir=onnx_dir, output_dir=out,
                                       batch_size=batch_size, show_progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
    result = {
        "shards": k,
        "rows": len(labelled),
        "seconds": seconds,
        "rows_per_s": len(labelled) / seconds,
        "vmhwm_mb": status_kb("VmHWM") / 1024,
        "peak_anon_mb": peak.peak_kb / 1024,
    }
    print("CURVE_RESULT " + json.dumps(result), flush=True)


def run_curve(args, work: Path) -> list[dict]:
    ((name, path),) = teachers(work, [args.curve_teacher]).items()
    onnx_dir = work / "onnx"
    results = []
    for k in args.curve:
        with tempfile.TemporaryDirectory(prefix="tmkd-curve-", dir=work) as out:
            cmd = [sys.executable, __file__, "--curve-child", str(k), "--teacher", path, "--out", out, "--onnx-dir",
                   str(onnx_dir), "--curve-backend", args.curve_backend, "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size)]  # fmt: skip
            print(f"[curve] {k} shard(s), {name}, {args.curve_backend}, fresh process ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"curve child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("CURVE_RESULT "))
            results.append({"teacher": name, "backend": args.curve_backend, **json.loads(line.split(" ", 1)[1])})
            print(f"[curve] {results[-1]}", flush=True)
            (RUNS_DIR / "curve.jsonl").parent.mkdir(parents=True, exist_ok=True)
            with open(RUNS_DIR / "curve.jsonl", "a") as f:  # each point as it lands
                f.write(json.dumps({**results[-1], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}) + "\n")
    return results


def curve_plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = [p["rows"] / 1000 for p in points]
    ax1.plot(rows, [p["seconds"] / 60 for p in points], "o-")
    ax1.set_xlabel("pool pairs (thousands)")
    ax1.set_ylabel("labelling time (min)")
    ax1.set_xlim(left=0)
    ax1.set_ylim(bottom=0)
    ax2.plot(rows, [p["vmhwm_mb"] for p in points], "o-", label="peak RSS (VmHWM)")
    ax2.plot(rows, [p["peak_anon_mb"] for p in points], "s--", label="peak anonymous RSS")
    ax2.set_xlabel("pool pairs (thousands)")
    ax2.set_ylabel("MB")
    ax2.set_xlim(left=0)
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    fig.suptitle(f"Labelling the SQuAD pool: {points[0]['teacher']}, {points[0]['backend']}, 2 CPU threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----- the report -----


def report(args, backends: dict | None, profile: dict | None, curve: list[dict] | None) -> str:
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — labelling at scale: teacher backends and cost",
        "",
        f"- command: `HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_labelling_scale.py "
        f"{shlex.join(sys.argv[1:])}`",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}, onnxruntime {_version('onnxruntime')}",
    ]
    if backends:
        lines += [
            f"- rows: the first {backends['rows']} pairs of `squad_pool/pool-00-of-10.tsv.gz` (mean "
            f"{backends['mean_tokens']:.1f} tokens, max_length {args.max_length}), batch {args.batch_size}; teachers "
            "with seeded random heads; median of "
            f"{args.repeats} interleaved repeats; each run includes tokenization and loading",
            "",
            "| teacher | method | pairs/s | x torch fp32 | x torch unsorted | max abs diff | mean abs diff "
            "| argmax agree |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in backends["teachers"].items():
            base, unsorted = r["pairs_per_s"]["torch fp32"], r["pairs_per_s"]["torch fp32 unsorted"]
            for m in METHODS:
                label_m = m + (f" ({r['int8_weight_type']})" if m == "onnx int8" and r["int8_weight_type"] else "")
                lines.append(
                    f"| {name} | {label_m} | {r['pairs_per_s'][m]:.1f} | {r['pairs_per_s'][m] / base:.2f} | "
                    f"{r['pairs_per_s'][m] / unsorted:.2f} | {r['max_abs_diff'][m]:.4f} | "
                    f"{r['mean_abs_diff'][m]:.4f} | {100 * r['argmax_agreement'][m]:.1f} % |"
                )
        lines.append("")
    if profile:
        lines += ["Where the time goes (onnxruntime kernel time by operator type, the benchmark rows):", ""]
        for key, p in profile.items():
            top = ", ".join(f"{op} {100 * share:.0f} %" for op, _, share in p["top"][:6])
            lines.append(f"- {key}: {p['total_ms'] / 1000:.1f} s in kernels: {top}")
        lines.append("")
    if curve:
        lines += [
            f"Cost curve: {curve[0]['teacher']}, backend {curve[0]['backend']}, first k shards, each in a fresh "
            "process and output directory (the export shared, made before):",
            "",
            "| shards | pairs | seconds | pairs/s | peak RSS (VmHWM) MB | peak anonymous RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for p in curve:
            lines.append(f"| {p['shards']} | {p['rows']:,} | {p['seconds']:.0f} | {p['rows_per_s']:.1f} | "
                         f"{p['vmhwm_mb']:.0f} | {p['peak_anon_mb']:.0f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teachers", nargs="+", default=["minilm", "mpnet"], choices=["minilm", "mpnet"])
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--curve", type=int, nargs="*", default=[])
    parser.add_argument("--curve-teacher", default="minilm", choices=["minilm", "mpnet"])
    parser.add_argument("--curve-backend", default="onnx-int8", choices=BACKENDS)
    parser.add_argument("--work", default=os.environ.get("TMKD_BENCH_WORK", "outputs/bench-labelling-scale"))
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    # internal: one point of the cost curve in a fresh process
    parser.add_argument("--curve-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.curve_child is not None:
        curve_child(args.curve_child, args.teacher, args.curve_backend, args.out, args.onnx_dir, args.batch_size)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    backends = None if args.skip_backends else run_backends(args, work)
    profile = profile_int8(args, work) if args.profile else None
    curve = run_curve(args, work) if args.curve else None
    if curve:  # every point recorded for this teacher and backend (the latest per shard count), runs before included
        recorded = [json.loads(line) for line in (RUNS_DIR / "curve.jsonl").read_text().splitlines() if line.strip()]
        latest = {
            p["shards"]: p
            for p in recorded
            if (p["teacher"], p["backend"]) == (curve[0]["teacher"], curve[0]["backend"])
        }
        if len(latest) > 1:
            curve_plot([latest[k] for k in sorted(latest)], RUNS_DIR / "labelling_cost_curve.png")
    text = report(args, backends, profile, curve)
    print(text)
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    record = {"backends": backends, "profile": profile, "curve": curve}
    (RUNS_DIR / "last.json").write_text(json.dumps(record, indent=2))
    if not args.no_record:
        with open(RESULTS, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
