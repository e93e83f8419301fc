"""Training throughput of distillation with cached soft labels, against plain fine-tuning and online teachers.

One student (layers 0, 2, 4 of all-MiniLM-L6-v2 via `tmkd_hf.student_from_teacher_layers`, the same initial weights
for every method), the same real QNLI batches (first `steps x batch` pairs of qnli/train.tsv, sequential sampling,
dynamic padding), the same number of optimizer steps, run interleaved and repeated in ONE process:

1. plain     -- `transformers.Trainer` fine-tuning the single-head student on the labels;
2. cached    -- `MultiTeacherDistillationTrainer` with a `MultiHeadStudent` (3 heads) and the `teacher_logits` column
                computed once by `label_with_teachers` (labelling is not timed: it is paid once, not per epoch);
3. online    -- the same trainer and student, no cached column, `teachers=[...]`: 3 MiniLM teachers run every step.

And the parts of the compute bound of (2)/(3), on the same batches:

- student    -- a bare loop: forward of the multi-head student, the TMKD loss, backward, AdamW step;
- teachers   -- the bare `no_grad` forwards of the 3 teachers.

Reported: steady-state examples/s (the first `--skip-steps` steps are left out for every method alike), the ratios
cached/plain (target >= 0.95) and cached/online against the bound (student + teachers) / student.
Teachers are MiniLM classifiers with seeded random heads: speed does not depend on what they learnt.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_training.py [--steps 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

from bench_labelling import DATA_DIR, RESULTS, Clock, code_version, command_line, load_average, machine, minilm_dir  # noqa: E402

METHODS = ("plain", "cached", "online", "student", "teachers")
TEXT_COLUMNS = ("question", "sentence")


def data_dir() -> Path:
    return DATA_DIR


class RecordingCollator:
    """Wraps a collator and keeps a fingerprint of every batch's `input_ids`, to check all methods saw the same."""

    def __init__(self, collator):
        self.collator = collator
        self.fingerprints: list[str] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.fingerprints.append(_fingerprint(batch["input_ids"]))
        return batch


class StepClock:
    """A `TrainerCallback` that notes the time at the end of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.times = [time.perf_counter()]

            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.perf_counter())

        self.callback = _Callback()
        self.times: list[float] = []


def build_teachers(root: Path, backbone: str, seeds: list[int]) -> list[str]:
    """One classifier per seed from the backbone (seeded random head, num_labels=2), saved with its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    dirs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(backbone, **LABELS)
        path = root / f"teacher-seed{seed}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(str(path))
    return dirs


LABELS = dict(num_labels=2, id2label={0: "entailment", 1: "not_entailment"},
              label2id={"entailment": 0, "not_entailment": 1})


class Bench:
    """Everything built once (untimed): data, labelled column, initial student weights, teachers, bare batches."""

    def __init__(self, args, work: Path):
        import run_tmkd_pipeline as pipeline
        from transformers import AutoTokenizer, DataCollatorWithPadding

        from tmkd_hf import DataCollatorWithTeacherLogits, label_with_teachers, student_from_teacher_layers
        from tmkd_hf.teachers import load_teacher

        self.args, self.work = args, work
        rows = args.steps * args.batch_size
        raw = pipeline.read_tsv(str(data_dir() / "train.tsv"), [*TEXT_COLUMNS, "label"], rows)
        if len(raw) < rows:
            raise ValueError(f"train.tsv has {len(raw)} rows; --steps x --batch-size needs {rows}.")
        raw = raw.map(lambda b: {"label": [LABELS["label2id"][v] for v in b["label"]]}, batched=True)
        self.backbone = args.backbone or minilm_dir()
        self.teacher_dirs = build_teachers(work, self.backbone, list(range(1, args.teachers + 1)))
        labelled = label_with_teachers(raw, self.teacher_dirs, text_columns=TEXT_COLUMNS, batch_size=64,
                                       max_length=args.max_length, label_names_order=["entailment", "not_entailment"],
                                       show_progress=False)
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone)
        tok = self.tokenizer

        def encode(b):
            return tok(b["question"], b["sentence"], truncation=True, max_length=args.max_length)

        self.train_cached = labelled.map(encode, batched=True, remove_columns=list(TEXT_COLUMNS))
        self.train_plain = self.train_cached.remove_columns("teacher_logits")
        lengths = [len(x) for x in self.train_plain["input_ids"]]
        self.mean_tokens = sum(lengths) / len(lengths)
        torch.manual_seed(args.seed)
        initial = student_from_teacher_layers(self.backbone, layers=args.student_layers, **LABELS)
        self.student_state = {k: v.clone() for k, v in initial.state_dict().items()}
        self.student_config = initial.config
        self.plain_collator = DataCollatorWithPadding(tok)
        self.kd_collator = DataCollatorWithTeacherLogits(tok)
        # the bare loops get the batches the trainers get (sequential sampling), collated once up front
        features = self.train_cached.to_list()
        self.bare_batches = [self.kd_collator(features[i : i + args.batch_size])
                             for i in range(0, rows, args.batch_size)]
        self.teachers = [load_teacher(d) for d in self.teacher_dirs]
        self.fingerprints: dict[str, list[str]] = {}
        self.num_parameters = sum(p.numel() for p in initial.parameters())

    def student(self, heads: int | None):
        from transformers import AutoModelForSequenceClassification

        from tmkd_hf import MultiHeadStudent

        model = AutoModelForSequenceClassification.from_config(self.student_config)
        model.load_state_dict(self.student_state)
        return MultiHeadStudent(model, num_heads=heads) if heads else model

    def training_args(self, name: str):
        """The same settings for every trainer; sequential sampling gives every method the same batches."""
        from transformers import TrainingArguments

        from tmkd_hf import DistillationArguments

        a = self.args
        common = dict(
            output_dir=str(self.work / name), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
            learning_rate=2e-4, warmup_steps=min(30, a.steps // 10), weight_decay=0.01, seed=a.seed,
            train_sampling_strategy="sequential", save_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, use_cpu=True,
        )
        if name == "plain":
            return TrainingArguments(**common)
        return DistillationArguments(**common, alpha=0.5, temperature=2.0, soft_loss="kl")

    def run_trainer(self, method: str) -> tuple[float, float, float]:
        """(steady-state seconds, total train() wall s, CPU s) of one training run."""
        from transformers import Trainer

        from tmkd_hf import MultiTeacherDistillationTrainer

        clock = StepClock()
        if method == "plain":
            collator = RecordingCollator(self.plain_collator)
            trainer = Trainer(model=self.student(None), args=self.training_args(method),
                              train_dataset=self.train_plain, data_collator=collator, callbacks=[clock.callback])
        else:
            collator = RecordingCollator(self.kd_collator)
            trainer = MultiTeacherDistillationTrainer(
                model=self.student(self.args.teachers), args=self.training_args(method),
                train_dataset=self.train_cached if method == "cached" else self.train_plain,
                data_collator=collator, teachers=self.teachers if method == "online" else None,
                callbacks=[clock.callback],
            )
        start = Clock()
        trainer.train()
        wall, cpu = start.stop()
        self.fingerprints[method] = collator.fingerprints[: self.args.steps]
        times = clock.times
        if len(times) != self.args.steps + 1:
            raise RuntimeError(f"{method}: expected {self.args.steps} steps, the callback saw {len(times) - 1}.")
        return times[-1] - times[self.args.skip_steps], wall, cpu

    def run_bare_student(self) -> tuple[float, float, float]:
        """The student's own work per step, without Trainer: forward, TMKD loss, backward, AdamW step."""
        from tmkd_hf.losses import multi_teacher_distillation_loss

        model = self.student(self.args.teachers).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.01)
        times = [time.perf_counter()]
        start = Clock()
        for batch in self.bare_batches:
            batch = dict(batch)
            teacher_logits, labels = batch.pop("teacher_logits"), batch.pop("labels")
            out = model(**batch)
            per_example, _ = multi_teacher_distillation_loss(out.head_logits, teacher_logits, labels, alpha=0.5,
                                                             temperature=2.0)
            per_example.mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
        wall, cpu = start.stop()
        self.fingerprints["student"] = [_fingerprint(b["input_ids"]) for b in self.bare_batches]
        return times[-1] - times[self.args.skip_steps], wall, cpu

    @torch.no_grad()
    def run_bare_teachers(self) -> tuple[float, float, float]:
        """The teachers' forwards per step (what online distillation adds), as the trainer runs them."""
        from tmkd_hf.teachers import teacher_forward

        times = [time.perf_counter()]
        start = Clock()
        for batch in self.bare_batches:
            for teacher in self.teachers:
                teacher_forward(teacher, batch)
            times.append(time.perf_counter())
        wall, cpu = start.stop()
        return times[-1] - times[self.args.skip_steps], wall, cpu

    def run(self, method: str) -> tuple[float, float, float]:
        if method == "student":
            return self.run_bare_student()
        if method == "teachers":
            return self.run_bare_teachers()
        return self.run_trainer(method)


def _fingerprint(ids: torch.Tensor) -> str:
    return hashlib.sha1(ids.numpy().tobytes() + str(tuple(ids.shape)).encode()).hexdigest()[:16]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (rows = steps x batch)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (the pipeline's default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (order rotated each repeat)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--skip-steps", type=int, default=3, help="first steps left out of the steady-state time")
    parser.add_argument("--teachers", type=int, default=3, help="number of teachers (= student heads)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--backbone", help="model dir for teachers and student (default: all-MiniLM-L6-v2)")
    parser.add_argument("--student-layers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.name}")
    args = parser.parse_args(argv)
    if not 0 <= args.skip_steps < args.steps:
        parser.error("--skip-steps must be >= 0 and < --steps")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    command = command_line(__file__, argv)
    load_before = load_average()
    report = [f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — training throughput (bench_training.py)", "",
              f"- machine: {machine()}", f"- command: `{command}`", f"- code: tmkd_hf at {code_version()}"]

    with tempfile.TemporaryDirectory(prefix="tmkd-bench-train-") as tmp:
        bench = Bench(args, Path(tmp))
        timed = args.steps - args.skip_steps
        print(f"{args.steps} steps x batch {args.batch_size} ({timed} timed), {args.teachers} teachers, mean "
              f"{bench.mean_tokens:.1f} tokens/row, {torch.get_num_threads()} torch threads; load {load_before}",
              flush=True)
        times: dict[str, list[tuple[float, float, float]]] = {m: [] for m in METHODS}
        for r in range(args.repeats):
            k = r % len(METHODS)
            for m in METHODS[k:] + METHODS[:k]:
                times[m].append(bench.run(m))
                steady, wall, cpu = times[m][-1]
                print(f"  repeat {r + 1}: {m:8s} steady {steady:7.2f} s ({timed * args.batch_size / steady:6.1f} "
                      f"ex/s), train wall {wall:7.2f} s, CPU {cpu:7.2f} s (load {load_average()})", flush=True)

    same = all(bench.fingerprints[m] == bench.fingerprints["student"] for m in ("plain", "cached", "online"))
    median = {m: statistics.median(s for s, _, _ in ts) for m, ts in times.items()}
    best = {m: min(s for s, _, _ in ts) for m, ts in times.items()}
    examples = timed * args.batch_size
    cached_vs_plain = median["plain"] / median["cached"]  # throughput ratio cached / plain
    cached_vs_online = median["online"] / median["cached"]
    bound = (median["student"] + median["teachers"]) / median["student"]
    lines = [
        "| method | what | median steady s | all steady s | examples/s (median) | examples/s (best) "
        "| median train() wall s | median CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    what = {
        "plain": "transformers.Trainer, single-head student, labels",
        "cached": f"MultiTeacherDistillationTrainer, {args.teachers}-head student, cached teacher_logits",
        "online": f"MultiTeacherDistillationTrainer, {args.teachers}-head student, {args.teachers} online teachers",
        "student": "bound part: bare student step (forward, TMKD loss, backward, AdamW)",
        "teachers": f"bound part: bare no_grad forwards of {args.teachers} teachers",
    }
    for m in METHODS:
        steadies = [s for s, _, _ in times[m]]
        lines.append(
            f"| {m} | {what[m]} | {median[m]:.2f} | {', '.join(f'{s:.2f}' for s in steadies)} "
            f"| {examples / median[m]:.1f} | {examples / best[m]:.1f} "
            f"| {statistics.median(w for _, w, _ in times[m]):.2f} "
            f"| {statistics.median(c for _, _, c in times[m]):.2f} |"
        )
    checks = [
        ("cached / plain throughput >= 0.95", f"{cached_vs_plain:.3f}", cached_vs_plain >= 0.95),
        ("cached / online throughput (measured)", f"{cached_vs_online:.2f}x", None),
        ("compute bound (student step + teacher forwards) / student step", f"{bound:.2f}x", None),
        ("measured / bound (share of the bound's speed-up reached)", f"{cached_vs_online / bound:.3f}", None),
        ("every method saw the same batches", "yes" if same else "NO", same),
    ]
    report.insert(3, f"- load average (1/5/15 min) before: {load_before}, after: {load_average()}")
    report += [
        f"- data: first {args.steps * args.batch_size} pairs of qnli/train.tsv (mean {bench.mean_tokens:.1f} tokens), "
        f"sequential batches of {args.batch_size}, dynamic padding, max_length {args.max_length}; {args.steps} steps, "
        f"first {args.skip_steps} left out of the steady-state time; {args.repeats} interleaved repeats; student: "
        f"layers {args.student_layers} of {'MiniLM-L6' if not args.backbone else args.backbone} "
        f"({bench.num_parameters:,} parameters), teachers: {args.teachers} full backbones",
        "",
        *lines,
        "",
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
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
