"""Why a student reads out the way its backbone was trained: [CLS] vs the mean on all-MiniLM-L6-v2, measured.

1. Spread (always, seconds): for each student layer choice, the state each readout hands the classification head
   at initialisation, over the first `--rows` QNLI train pairs: `tmkd_hf.readout.spread_ratio` (RMS over features of
   the per-feature std across examples / RMS of the per-feature mean). Below 0.1 the trainer warns.
2. Training (`--train`): labels-only students (`--layers`, default 0 1 2) on `--train-file` (default: the shipped
   1,200-row QNLI slice), `--epochs` epochs, lr 2e-4, batch 16, 30 warm-up steps, max_length 64; validation accuracy
   and the first / last logged training loss, for each readout and `--seeds`. The same runs as the slow test
   `test_a_student_stuck_at_chance_through_cls_leaves_it_through_the_mean`.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_readout.py [--train --seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labelling import RESULTS, code_version, command_line, load_average, machine, minilm_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def read_pairs(path: Path, limit: int | None = None):
    from datasets import Dataset

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return Dataset.from_dict({"question": [r["question"] for r in rows], "sentence": [r["sentence"] for r in rows],
                              "label": [int(r["label"] != "entailment") for r in rows]})


def spreads(backbone: str, layer_sets: list[list[int]], rows: int, train_file: Path) -> list[str]:
    from transformers import AutoTokenizer, set_seed

    from tmkd_hf import MultiHeadStudent, student_from_teacher_layers
    from tmkd_hf.readout import readout_features, spread_ratio

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    data = read_pairs(train_file, rows)
    batch = tokenizer(list(data["question"]), list(data["sentence"]), padding=True, truncation=True, max_length=128,
                      return_tensors="pt")
    lines = ["| student layers | [CLS] readout spread | mean readout spread |", "|---|---|---|"]
    for layers in layer_sets:
        cells = []
        for readout in ("cls", "mean"):
            set_seed(1)
            student = MultiHeadStudent(student_from_teacher_layers(backbone, layers=layers, num_labels=2), 1,
                                       readout=readout)
            cells.append(f"{spread_ratio(readout_features(student, student.head, dict(batch))):.3f}")
        lines.append(f"| {', '.join(map(str, layers))} | {' | '.join(cells)} |")
    return lines


def train_once(backbone: str, readout: str, seed: int, args) -> dict:
    from transformers import AutoTokenizer, set_seed

    from tmkd_hf import (
        DistillationArguments,
        MultiHeadStudent,
        MultiTeacherDistillationTrainer,
        student_from_teacher_layers,
    )

    tokenizer = AutoTokenizer.from_pretrained(backbone)

    def encode(dataset):
        return dataset.map(lambda b: tokenizer(b["question"], b["sentence"], truncation=True, max_length=64),
                           batched=True, remove_columns=["question", "sentence"])

    set_seed(seed)
    student = MultiHeadStudent(student_from_teacher_layers(backbone, layers=args.layers, num_labels=2), 1,
                               readout=readout)
    with tempfile.TemporaryDirectory() as out:
        training = DistillationArguments(
            output_dir=out, alpha=0.0, learning_rate=2e-4, warmup_steps=30, num_train_epochs=args.epochs,
            per_device_train_batch_size=16, per_device_eval_batch_size=64, weight_decay=0.01, seed=seed,
            logging_steps=min(25, max(1, round(args.epochs * 75 / 4))), report_to="none", use_cpu=True,
            save_strategy="no", disable_tqdm=True,
        )
        start = time.perf_counter()
        trainer = MultiTeacherDistillationTrainer(
            model=student, args=training, train_dataset=encode(read_pairs(args.train_file)),
            processing_class=tokenizer,
            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        )
        trainer.train()
        accuracy = trainer.evaluate(encode(read_pairs(args.validation_file)))["eval_accuracy"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [float("nan")]
    return {"accuracy": accuracy, "first_loss": losses[0], "min_loss": min(losses), "last_loss": losses[-1],
            "steps": trainer.state.global_step, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="train pairs the spread is measured on")
    parser.add_argument("--train", action="store_true", help="also train labels-only students with each readout")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--train-file", type=Path, default=REPO / "data" / "qnli" / "train.tsv")
    parser.add_argument("--validation-file", type=Path, default=REPO / "data" / "qnli" / "validation.tsv")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    backbone = minilm_dir()
    load_before = load_average()
    lines = [f"Readout spread at initialisation, all-MiniLM-L6-v2 layers copied by `student_from_teacher_layers`, "
             f"first {args.rows} pairs of {args.train_file.relative_to(REPO)} (the trainer warns below 0.1):", ""]
    lines += spreads(backbone, [[0, 2, 4], [0, 1, 2], [0, 1, 2, 3, 4, 5]], args.rows, args.train_file)
    if args.train:
        lines += ["", f"Labels-only students, layers {args.layers}, {args.train_file.relative_to(REPO)}, "
                  f"{args.epochs:g} epochs, lr 2e-4, batch 16, max_length 64; accuracy on "
                  f"{args.validation_file.relative_to(REPO)}:", "",
                  "| readout | seed | validation acc | first / lowest / last logged loss | steps | seconds |",
                  "|---|---|---|---|---|---|"]
        summary = {}
        for readout in ("cls", "mean"):
            for seed in args.seeds:
                r = train_once(backbone, readout, seed, args)
                summary.setdefault(readout, []).append(100 * r["accuracy"])
                lines.append(f"| {readout} | {seed} | {100 * r['accuracy']:.1f} | {r['first_loss']:.3f} / "
                             f"{r['min_loss']:.3f} / {r['last_loss']:.3f} | {r['steps']} | {r['seconds']:.0f} |")
                print(lines[-1], flush=True)
        for readout, accs in summary.items():
            spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
            lines.append(f"| {readout} | mean | {statistics.mean(accs):.1f}{spread} | | | |")
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        command = command_line(__file__, argv)
        report = [f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — readouts (bench_readout.py)", "",
                  f"- machine: {machine()}", f"- load average before: {load_before}, after: {load_average()}",
                  f"- command: `{command}`", f"- code: tmkd_hf at {code_version()}", "", table, ""]
        with RESULTS.open("a") as f:
            f.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
