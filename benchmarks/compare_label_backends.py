"""Do int8 soft labels cost the student? Two bench_ablation output dirs that differ only in how the teachers labelled
(`--teacher-backend`, e.g. torch and onnx-int8, the second made with `--reuse-from` the first: the same teachers), the
same rows and seeds, compared side by side.

- The soft labels themselves, per split: the max and mean |difference| of the logits, how often the teachers' argmax
  agrees, and the mean KL divergence between the two at the distillation temperature (what the soft loss sees).
- The students: test (and validation) accuracy per seed from both, the paired difference per seed (the same seed
  starts from the same student and sees the same batches: only the soft labels differ) with its mean ± standard
  error (sd of the differences / sqrt(n)), and the unpaired difference of means ± its standard error.

Run:  python benchmarks/compare_label_backends.py outputs/ablation-qnli outputs/ablation-qnli-int8 --rows TMKD
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labelling import RESULTS, code_version, command_line, machine  # noqa: E402

SPLITS = ("train", "pool", "validation", "test")


def backend_of(out: Path) -> str:
    return json.loads((out / "settings.json").read_text()).get("teacher_backend", "torch")


def load_labelled(out: Path, split: str):
    from datasets import load_from_disk

    from tmkd_hf.soft_label_cache import MANIFEST_NAME

    folder = out / "labelled" / split
    return load_from_disk(str(folder)) if (folder / MANIFEST_NAME).is_file() else None  # finished caches only


def teacher_accuracies(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """Each teacher's accuracy, then the ensemble's (mean of the teachers' probabilities)."""
    probs = np.exp(logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True))
    each = [float((logits[:, t].argmax(-1) == labels).mean()) for t in range(logits.shape[1])]
    return each + [float((probs.mean(1).argmax(-1) == labels).mean())]


def label_agreement(a: np.ndarray, b: np.ndarray, temperature: float) -> dict:
    """How far `b`'s logits are from `a`'s: [rows, teachers, labels] each."""
    if a.shape != b.shape:
        raise SystemExit(f"the two caches hold other shapes: {a.shape} and {b.shape}")
    diff = np.abs(a - b)

    def log_softmax(x):
        x = x / temperature
        return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)

    la, lb = log_softmax(a), log_softmax(b)
    kl = (np.exp(la) * (la - lb)).sum(-1)
    return {"rows": int(a.shape[0]), "teachers": int(a.shape[1]), "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()), "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "mean_kl": float(kl.mean())}


def runs_by_seed(out: Path, row: str) -> dict[int, dict]:
    runs = (json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"{row}__seed*.json")))
    return {r["seed"]: r for r in runs}


def compare(a_dir: Path, b_dir: Path, rows: list[str]) -> str:
    a_name, b_name = backend_of(a_dir), backend_of(b_dir)
    settings = json.loads((a_dir / "settings.json").read_text())
    lines = [f"Soft labels of `{b_dir.name}` ({b_name}) against `{a_dir.name}` ({a_name}), the same teachers and rows "
             f"(T = {settings['temperature']:g} for the KL):", "",
             "| split | rows | teachers | max abs logit diff | mean abs logit diff | argmax agreement | mean KL |",
             "|---|---|---|---|---|---|---|"]
    caches = {(side, split): load_labelled(out, split)
              for side, out in (("a", a_dir), ("b", b_dir)) for split in SPLITS}  # each cache read once
    logits = {key: None if ds is None else np.asarray(ds.with_format("numpy")["teacher_logits"], dtype=np.float64)
              for key, ds in caches.items()}
    for split in SPLITS:
        a, b = logits["a", split], logits["b", split]
        if a is None or b is None:
            continue
        m = label_agreement(a, b, settings["temperature"])
        lines.append(f"| {split} | {m['rows']:,} | {m['teachers']} | {m['max_abs']:.4f} | {m['mean_abs']:.4f} | "
                     f"{100 * m['argmax_agreement']:.2f} % | {m['mean_kl']:.2e} |")
    graded = [sp for sp in ("validation", "test") if caches["a", sp] is not None
              and "label" in caches["a", sp].column_names and logits["b", sp] is not None]
    if graded:
        names = [f"teacher_{t}" for t in range(logits["a", graded[0]].shape[1])] + ["ensemble"]
        lines += ["", "The teachers' own accuracy with each backend's logits:", "",
                  "| split | backend | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for sp in graded:
            labels = np.asarray(caches["a", sp]["label"])
            for name, side in ((a_name, "a"), (b_name, "b")):
                accs = teacher_accuracies(logits[side, sp], labels)
                lines.append(f"| {sp} | {name} | " + " | ".join(f"{100 * x:.1f}" for x in accs) + " |")
    for row in rows:
        ra, rb = runs_by_seed(a_dir, row), runs_by_seed(b_dir, row)
        seeds = sorted(set(ra) & set(rb))
        if not seeds:
            lines += ["", f"{row}: no seed finished in both."]
            continue
        lines += ["", f"{row}, students distilled from each (the same seeds):", "",
                  f"| seed | {a_name} validation | {b_name} validation | {a_name} test | {b_name} test | "
                  f"test {b_name} − {a_name} |", "|---|---|---|---|---|---|"]
        diffs = {"validation": [], "test": []}
        for seed in seeds:
            ma, mb = ra[seed]["metrics"], rb[seed]["metrics"]
            for split in diffs:
                diffs[split].append(100 * (mb[split]["accuracy"] - ma[split]["accuracy"]))
            lines.append(f"| {seed} | {100 * ma['validation']['accuracy']:.1f} | "
                         f"{100 * mb['validation']['accuracy']:.1f} | {100 * ma['test']['accuracy']:.1f} | "
                         f"{100 * mb['test']['accuracy']:.1f} | {diffs['test'][-1]:+.1f} |")
        lines.append("")
        for split in ("validation", "test"):
            acc_a = [100 * ra[s]["metrics"][split]["accuracy"] for s in seeds]
            acc_b = [100 * rb[s]["metrics"][split]["accuracy"] for s in seeds]
            d = diffs[split]
            paired_se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            unpaired_se = (math.sqrt(statistics.variance(acc_a) / len(acc_a) + statistics.variance(acc_b) / len(acc_b))
                           if len(d) > 1 else float("nan"))
            lines.append(f"- {split}: {a_name} {statistics.mean(acc_a):.1f} ± {_sd(acc_a)}, {b_name} "
                         f"{statistics.mean(acc_b):.1f} ± {_sd(acc_b)} (mean ± sd over {len(d)} seeds); {b_name} − "
                         f"{a_name}: paired {statistics.mean(d):+.2f} ± {paired_se:.2f} (SE), unpaired "
                         f"{statistics.mean(acc_b) - statistics.mean(acc_a):+.2f} ± {unpaired_se:.2f} (SE).")
    return "\n".join(lines) + "\n"


def _sd(values: list[float]) -> str:
    return f"{statistics.stdev(values):.1f}" if len(values) > 1 else "–"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path, help="bench_ablation output dir (e.g. torch fp32 soft labels)")
    parser.add_argument("other", type=Path, help="the same ablation labelled with another --teacher-backend")
    parser.add_argument("--rows", nargs="+", default=["TMKD"])
    parser.add_argument("--no-record", action="store_true", help=f"do not append the table to {RESULTS.name}")
    args = parser.parse_args(argv)
    for out in (args.baseline, args.other):
        if not (out / "settings.json").is_file():
            parser.error(f"{out}: not a bench_ablation output dir (no settings.json)")
    table = compare(args.baseline, args.other, args.rows)
    print(table)
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write("\n".join([f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — int8 against fp32 soft labels: the labels "
                               "and the students (compare_label_backends.py)", "", f"- machine: {machine()}",
                               f"- command: `{command_line(__file__, argv)}`", f"- code: tmkd_hf at {code_version()}",
                               "", table]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
