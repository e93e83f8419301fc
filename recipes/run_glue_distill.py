#!/usr/bin/env python
"""TMKD stage 2 (multi-teacher fine-tuning) on GLUE, WikiQA or your own files, in the shape of transformers'
`examples/pytorch/text-classification/run_glue.py`.

    # distil from teachers labelled on the fly (their logits are cached under output_dir and reused on a rerun)
    python recipes/run_glue_distill.py --task_name qnli --model_name_or_path stage1-student \\
        --teachers teacher-a teacher-b teacher-c --do_train --do_eval --output_dir out/qnli
    # from a dataset labelled once by recipes/label_teachers.py
    python recipes/run_glue_distill.py --task_name qnli --train_file qnli/train.tsv --validation_file qnli/dev.tsv \\
        --teacher_logits_dir labelled/qnli-train --model_name_or_path small-bert --do_train --do_eval --output_dir out
    # no teachers: plain fine-tuning on the labels (how the teachers themselves are trained)
    python recipes/run_glue_distill.py --task_name rte --model_name_or_path bert-base-uncased --do_train ...
    # one JSON file with every field, or accelerate launch for several processes
    python recipes/run_glue_distill.py recipes/configs/glue_qnli_distill.json
    accelerate launch --num_processes 2 recipes/run_glue_distill.py recipes/configs/glue_qnli_distill.json
    accelerate launch --multi_gpu --num_processes 2 recipes/run_glue_distill.py ... --use_cpu   # 2 CPU processes

Data: `--task_name` (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, wikiqa) loads the task from the Hub, unless
local files are given (`--train_file`, `--validation_file`, `--test_file`: csv, tsv (no quoting, as GLUE ships
them), json, jsonl, parquet or `save_to_disk` dirs); the task then says which columns to read (the GLUE TSV and
WikiQA TSV column names are understood), the label order and the metrics. Without a task, name the columns with
`--text_columns` and `--label_column`.

Student: `--model_name_or_path` (a checkpoint, or a stage-1 student saved with every head by
`MultiHeadStudent.save_pretrained`, or the Hub id of one that `run_qa_distill_pretrain.py --push_to_hub` published,
at `--model_revision`: it continues with every head), or `--student_layers 0 2 4` copied from
`--student_init_from`. With several teachers the student gets one head per teacher (`--per_teacher_heads`, the
default); `--per_teacher_heads false` trains one head on the averaged teachers (the 1avg-o-1 baseline). The loss is
`alpha * soft + (1 - alpha) * hard`; the saved model is the merged plain checkpoint with its tokenizer.
`--export_onnx` also exports it to `output_dir/onnx/` (fp32 and int8 ONNX), which `--push_to_hub` uploads with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from datasets import Dataset
from transformers import AutoConfig, AutoModelForSequenceClassification

from tmkd_hf import (
    DataCollatorWithTeacherLogits,
    DistillationArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    load_teacher_logits,
    read_manifest,
)
from tmkd_hf.collator import TEACHER_LOGITS
from tmkd_hf.cross_encoder import is_cross_encoder_dir
from tmkd_hf.distributed import leave_process_group
from tmkd_hf.export import ONNX_SUBFOLDER, check_onnx_installed
from tmkd_hf.modeling import STUDENT_CONFIG_NAME, multihead_checkpoint_dir
from tmkd_hf.readout import detect_readout
from tmkd_hf.soft_label_cache import check_label_order
from tmkd_hf.tasks import (
    FILE_EXTENSIONS,
    TaskSpec,
    build_compute_metrics,
    custom_task,
    encode_labels,
    get_task,
    label_values,
    load_rows,
    resolve_label_names,
)

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # loaded by its path: recipe_utils.py is beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_utils import (  # noqa: E402
    TEACHER_LOGITS_SUBDIR,
    StudentModelArguments,
    TextDataArguments,
    label_config,
    label_on_the_fly,
    parse_recipe_args,
    setup_run,
    tokenize_texts,
    train_and_save_metrics,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments(StudentModelArguments):
    """The student, and the teachers it learns from (the fields both stage recipes have, `StudentModelArguments`,
    and stage 2's own)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Student checkpoint (local dir or Hub id), or a stage-1 student saved with every head (a dir "
            f"with {STUDENT_CONFIG_NAME}, or the Hub id of one published by run_qa_distill_pretrain.py "
            "--push_to_hub, at --model_revision): it continues with every head."
        },
    )
    per_teacher_heads: bool | None = field(
        default=None,
        metadata={
            "help": "One student head per teacher (TMKD's m-o-1). Default: true with more than one teacher. False: "
            "one head learning from the averaged teachers (1avg-o-1)."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Start a new classification head when the checkpoint's labels are not the task's."},
    )


@dataclass
class DataTrainingArguments(TextDataArguments):
    """What data to train and evaluate on (as run_glue.py, plus columns for your own files); the text fields both
    stage recipes have are `TextDataArguments`'."""

    task_name: str | None = field(
        default=None,
        metadata={
            "help": "cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli or wikiqa (Hub data unless files are given)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset (as run_glue.py): its train / validation / test splits are the data."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    file_column_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Column names of headerless csv/tsv files (their first line is data), e.g. the original CoLA "
            "TSVs: source label original_label sentence."
        },
    )
    train_file: str | None = field(
        default=None, metadata={"help": "csv/tsv/json/jsonl/parquet file or save_to_disk dir."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data (MNLI: the matched set)."})
    validation_mismatched_file: str | None = field(
        default=None, metadata={"help": "MNLI only: the mismatched evaluation set (reported with the _mm suffix)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Prediction data (MNLI: the matched test set)."})
    test_mismatched_file: str | None = field(default=None, metadata={"help": "MNLI only: the mismatched test set."})
    text_columns: list[str] | None = field(
        default=None, metadata={"help": "One or two text columns (default: the task's)."}
    )
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the task's, or 'label')."})
    group_column: str | None = field(
        default=None,
        metadata={"help": "Custom binary data: question id column; adds per-question MAP and MRR to the metrics."},
    )
    positive_label: str | None = field(
        default=None,
        metadata={
            "help": "With --group_column: the label of a relevant candidate, whose probability ranks a question's "
            "candidates for MAP and MRR. Default: the task's (QNLI, RTE, WNLI: entailment; WikiQA: 1), else the "
            "second label."
        },
    )
    is_regression: bool | None = field(
        default=None, metadata={"help": "Custom data: a regression task (default: when the labels are floats)."}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every row to max_seq_length (default: pad each batch to its longest)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only the first N prediction rows."})

    def __post_init__(self):
        if self.task_name is not None:
            self.task_name = get_task(self.task_name).name  # unknown task: the error lists the known ones
        super().__post_init__()
        if self.dataset_name and self.files:
            raise ValueError(
                f"Give the data one way: --dataset_name {self.dataset_name} or local files ({sorted(self.files)}), "
                "not both."
            )
        if self.dataset_config_name and not self.dataset_name:
            raise ValueError("--dataset_config_name needs --dataset_name.")
        if (self.validation_mismatched_file or self.test_mismatched_file) and self.task_name != "mnli":
            raise ValueError("--validation_mismatched_file / --test_mismatched_file are for --task_name mnli only.")
        if self.positive_label is not None and not (
            self.group_column or (self.task_name is not None and get_task(self.task_name).is_ranking)
        ):
            raise ValueError("--positive_label names the relevant label of a ranking: give --group_column too.")
        for name in (
            "train_file",
            "validation_file",
            "validation_mismatched_file",
            "test_file",
            "test_mismatched_file",
        ):
            path = getattr(self, name)
            if path is None:
                continue
            if not os.path.exists(path):
                raise ValueError(f"--{name} {path} does not exist.")
            ext = path.rsplit(".", 1)[-1].lower()
            if os.path.isfile(path) and ext not in FILE_EXTENSIONS:
                raise ValueError(f"--{name} {path}: use a {'/'.join(FILE_EXTENSIONS)} file or a save_to_disk dir.")

    @property
    def files(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("train", self.train_file),
                ("validation", self.validation_file),
                ("validation_mismatched", self.validation_mismatched_file),
                ("test", self.test_file),
                ("test_mismatched", self.test_mismatched_file),
            )
            if v is not None
        }


@dataclass
class ExportArguments:
    """Deployment files written beside the trained student, and pushed with it by --push_to_hub."""

    export_onnx: bool = field(
        default=False,
        metadata={
            "help": "After training, export the merged student to output_dir/onnx/ (model.onnx, and model_int8.onnx "
            "unless --onnx_int8 false; tmkd_hf.export.export_onnx, checked against PyTorch). Needs pip install "
            '"tmkd_hf[onnx]".'
        },
    )
    onnx_int8: bool = field(
        default=True,
        metadata={"help": "With --export_onnx, also write the int8 graph (onnxruntime dynamic quantization)."},
    )

    def check(self, training_args) -> None:
        """Before any data or model is loaded: the export needs a trained student and onnx/onnxruntime."""
        if not self.export_onnx:
            return
        if not training_args.do_train:
            raise ValueError("--export_onnx exports the student this run trains: add --do_train (or export a saved "
                             "student with tmkd_hf.export.export_onnx).")
        check_onnx_installed("--export_onnx")


def parse_args(argv: list[str] | dict | None = None):
    """One JSON config path (like run_glue.py), command-line flags, or both (`recipe_utils.parse_recipe_args`)."""
    return parse_recipe_args(
        (ModelArguments, DataTrainingArguments, DistillationArguments, ExportArguments), argv, "run_glue_distill.py"
    )


def load_splits(data_args: DataTrainingArguments, model_args: ModelArguments, task: TaskSpec | None) -> dict:
    """Train / evaluation / test splits by role: from local files when any is given, else from the task's Hub data.

    Returns `{"train": ds, "eval": [(name, ds), ...], "test": [(name, ds), ...]}` (missing splits left out).
    """
    splits: dict = {"eval": [], "test": []}
    files = data_args.files
    if not data_args.dataset_name and (files or task is None or task.hub_dataset is None):
        if "train" in files:
            splits["train"] = load_rows(
                files["train"], cache_dir=model_args.cache_dir, column_names=data_args.file_column_names
            )
        suffix = ("", "-mm")
        for role, keys in (("eval", ("validation", "validation_mismatched")), ("test", ("test", "test_mismatched"))):
            for key, name_suffix in zip(keys, suffix):
                if key in files:
                    ds = load_rows(files[key], cache_dir=model_args.cache_dir, column_names=data_args.file_column_names)
                    splits[role].append((name_suffix, ds))
        if task is not None and task.name == "mnli" and "validation" in files and "validation_mismatched" not in files:
            logger.warning(
                "MNLI from local files without --validation_mismatched_file: evaluating the matched set only."
            )
        return splits
    if data_args.dataset_name:
        path, config = data_args.dataset_name, data_args.dataset_config_name
        what = f"--dataset_name {path}" + (f" ({config})" if config else "")
    else:
        path, config = task.hub_dataset
        what = f"task {task.name!r} from the Hub ({path}, {config})"
    try:
        raw = datasets.load_dataset(path, config, cache_dir=model_args.cache_dir, token=model_args.token)
    except Exception as err:
        raise ValueError(
            f"Cannot load {what}: {type(err).__name__}: {err}. Offline (HF_DATASETS_OFFLINE=1), give local files: "
            "--train_file / --validation_file / --test_file."
        ) from err
    if "train" in raw:
        splits["train"] = raw["train"]
    validation_splits = task.validation_splits if task is not None else ("validation",)
    test_splits = task.test_splits if task is not None else ("test",)
    for role, names in (("eval", validation_splits), ("test", test_splits)):
        for name, name_suffix in zip(names, ("", "-mm")):
            if name in raw:
                splits[role].append((name_suffix, raw[name]))
    return splits


INDEX_COLUMNS = ("idx", "index", "id")


def infer_text_columns(columns: list[str], label_column: str, group_column: str | None) -> list[str] | None:
    """run_glue.py's rule: `sentence1` / `sentence2` if both exist, else the first two non-label columns, else the
    first one. Row-number columns (idx, index, id) and the --group_column are skipped: they are not text."""
    candidates = [c for c in columns if c not in (label_column, group_column) and c.lower() not in INDEX_COLUMNS]
    if "sentence1" in candidates and "sentence2" in candidates:
        return ["sentence1", "sentence2"]
    return candidates[:2] or None


def resolve_task(data_args: DataTrainingArguments, model_args: ModelArguments, sample: Dataset | None) -> TaskSpec:
    """The task (named, or custom over the given columns); command-line columns override the task's."""
    if data_args.task_name is not None:
        task = get_task(data_args.task_name)
        overrides = {}
        if data_args.text_columns:
            overrides["text_columns"] = tuple(data_args.text_columns)
        if data_args.label_column:
            overrides["label_column"] = data_args.label_column
        if data_args.group_column:
            overrides["group_column"] = data_args.group_column
        if data_args.positive_label:
            overrides["positive_label"] = data_args.positive_label
        return dataclasses.replace(task, **overrides)
    text_columns = data_args.text_columns
    if text_columns is None and model_args.teacher_logits_dir:
        manifest = read_manifest(model_args.teacher_logits_dir) or {}
        text_columns = manifest.get("text_columns")
    label_column = data_args.label_column or "label"
    if not text_columns and sample is not None:
        text_columns = infer_text_columns(sample.column_names, label_column, data_args.group_column)
        logger.info(f"No --text_columns: reading {text_columns} (as run_glue.py; pass --text_columns to choose).")
    if not text_columns:
        raise ValueError("Without --task_name, name the text columns of your files: --text_columns <first> [<second>].")
    is_regression = data_args.is_regression
    if is_regression is None and sample is not None and label_column in sample.column_names:
        feature = sample.features[label_column]
        is_regression = getattr(feature, "dtype", None) in ("float32", "float64")
    return custom_task(text_columns, label_column, bool(is_regression), data_args.group_column,
                       positive_label=data_args.positive_label)


def student_config(model_args: ModelArguments):
    """The config of the model the student starts from (its label names constrain the label set). A stage-1 student
    is a multi-head dir or a Hub repo whose root is one (at --model_revision)."""
    source = model_args.student_init_from or model_args.model_name_or_path
    multi_head_dir = multihead_checkpoint_dir(
        source, revision=model_args.model_revision, cache_dir=model_args.cache_dir, token=model_args.token
    )
    if multi_head_dir is not None:
        with open(os.path.join(multi_head_dir, STUDENT_CONFIG_NAME)) as f:
            return AutoConfig.for_model(**json.load(f)["base_config"]), True
    if is_cross_encoder_dir(str(source)):  # a mean-readout export (e.g. a teacher): reloaded with its Dense head
        return AutoConfig.from_pretrained(source), True
    config = AutoConfig.from_pretrained(
        source,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )
    return config, False


def check_cache_label_order(teacher_logits_dir: str, label_list: list[str] | None) -> None:
    """The cached teacher logits must be in this run's label order: the rule of
    `tmkd_hf.soft_label_cache.check_label_order`, which the trainer applies to the student's id2label too."""
    cached = (read_manifest(teacher_logits_dir) or {}).get("label_names")
    check_label_order(cached, label_list, "this run's labels are", f"The teacher logits in {teacher_logits_dir}")


def main(argv: list[str] | dict | None = None, return_trainer: bool = False):
    """The run; returns its metrics (train, eval, predict), and with `return_trainer` also the trainer, as
    `(metrics, trainer)`: what run_tmkd_pipeline.py, which runs stage 2 through this function, reads the student's
    card data from."""
    model_args, data_args, training_args, export_args = parse_args(argv)
    model_args.check_locations()
    export_args.check(training_args)
    setup_run(logger, training_args, verbose_libraries=True)
    logger.info(f"Training/evaluation parameters {training_args}")

    # ----- data -----
    task = get_task(data_args.task_name) if data_args.task_name else None
    splits = load_splits(data_args, model_args, task)
    if model_args.teacher_logits_dir:
        # the labelled rows are the training rows; with a train split as well, first check they are the same rows
        splits["train"] = load_teacher_logits(model_args.teacher_logits_dir, splits.get("train"))
    sample = splits["train"] if "train" in splits else next((ds for _, ds in splits["eval"] + splits["test"]), None)
    task = resolve_task(data_args, model_args, sample)
    if training_args.do_train and "train" not in splits:
        raise ValueError("--do_train needs training data: --train_file, --teacher_logits_dir or a Hub task_name.")
    if training_args.do_eval and not splits["eval"]:
        raise ValueError("--do_eval needs evaluation data: --validation_file (or a Hub task_name).")
    if training_args.do_predict and not splits["test"]:
        raise ValueError("--do_predict needs prediction data: --test_file (or a Hub task_name).")
    columns = {}  # role -> (text columns, label column, group column) as named in that split
    if "train" in splits:
        columns["train"] = task.resolve_columns(splits["train"].column_names, "the training data")
    for role, need_label in (("eval", True), ("test", False)):
        for suffix, ds in splits[role]:
            what = f"the {'evaluation' if role == 'eval' else 'prediction'} data{suffix and ' (mismatched)'}"
            columns[role + suffix] = task.resolve_columns(ds.column_names, what, need_label=need_label)
    if data_args.max_train_samples is not None and "train" in splits:
        splits["train"] = splits["train"].select(range(min(data_args.max_train_samples, len(splits["train"]))))
    for role, limit in (("eval", data_args.max_eval_samples), ("test", data_args.max_predict_samples)):
        if limit is not None:
            splits[role] = [(s, ds.select(range(min(limit, len(ds))))) for s, ds in splits[role]]

    # ----- label space: the model's label names, else the task's, else the training labels sorted -----
    config, multi_head_source = student_config(model_args)
    if task.is_regression:
        label_list = None
    else:
        role, source = ("train", splits["train"]) if "train" in splits else ("eval", splits["eval"][0][1])
        label_list = resolve_label_names(
            task,
            label_values(source, columns[role][1], task),
            config,
            use_model_labels=not model_args.ignore_mismatched_sizes,
        )
    if task.is_ranking and data_args.positive_label is not None and label_list is not None:
        if data_args.positive_label.lower() not in [name.lower() for name in label_list]:
            raise ValueError(f"--positive_label {data_args.positive_label!r} is not one of the labels {label_list}.")
    num_labels = 1 if label_list is None else len(label_list)
    if multi_head_source and config.num_labels != num_labels:
        raise ValueError(
            f"The stage-1 student {model_args.model_name_or_path} predicts {config.num_labels} labels but this task "
            f"has {num_labels} ({label_list}). A multi-head student keeps its label count: start from a plain one."
        )
    no_teachers = not (model_args.teachers or model_args.teacher_logits_dir)
    with training_args.main_process_first(desc="label encoding"):
        if "train" in splits:
            splits["train"] = encode_labels(
                splits["train"], columns["train"][1], label_list, task, "the training data", allow_missing=True
            )
            if no_teachers:  # nothing to learn from in an unlabelled row (SNLI / MNLI's Hub copies mark them -1)
                splits["train"] = drop_unlabelled(splits["train"], task, "training")
        splits["eval"] = [
            (
                s,
                drop_unlabelled(
                    encode_labels(
                        ds, columns["eval" + s][1], label_list, task, f"the evaluation data{s}", allow_missing=True
                    ),
                    task,
                    f"evaluation{s}",
                ),
            )
            for s, ds in splits["eval"]
        ]
        predict = []
        for s, ds in splits["test"]:
            label_column = columns["test" + s][1]
            if label_column is not None and _fully_labelled(ds, label_column, task):
                ds = encode_labels(ds, label_column, label_list, task, f"the prediction data{s}", allow_missing=False)
            elif label_column is not None:
                ds = ds.remove_columns(label_column)  # unlabelled test rows (GLUE's are -1): predictions only
            predict.append((s, ds))
        splits["test"] = predict

    # ----- teachers: how many (labelled on the fly below, or already in the training data) -----
    num_teachers = 0
    if model_args.teachers:
        num_teachers = len(model_args.teachers)
    elif "train" in splits and TEACHER_LOGITS in splits["train"].column_names:
        first = np.asarray(splits["train"][0][TEACHER_LOGITS])
        num_teachers = first.shape[0] if first.ndim == 2 else 1
        check_cache_label_order(model_args.teacher_logits_dir, label_list)
    if num_teachers == 0 and training_args.alpha != 0.0:
        logger.info(f"No teachers: plain fine-tuning on the labels (alpha {training_args.alpha} -> 0).")
        training_args.alpha = 0.0
    if task.is_regression and training_args.soft_loss != "mse":
        logger.info(f"Regression task: soft_loss {training_args.soft_loss!r} -> 'mse'.")
        training_args.soft_loss = "mse"

    # ----- the student -----
    per_teacher_heads = model_args.per_teacher_heads
    if per_teacher_heads is None:
        per_teacher_heads = num_teachers > 1 or (multi_head_source and num_teachers == 0)
    label_kwargs = label_config(label_list)
    if multi_head_source:  # every head continues (a local dir, or a Hub repo downloaded at --model_revision)
        student = MultiHeadStudent.from_pretrained(
            model_args.model_name_or_path,
            readout=model_args.readout,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        if num_teachers > 1 and per_teacher_heads and student.num_heads == 1:
            student = student.with_heads(num_teachers)  # every head continues from the one it was saved with
        if num_teachers and per_teacher_heads and student.num_heads != num_teachers:
            raise ValueError(
                f"The stage-1 student {model_args.model_name_or_path} has {student.num_heads} heads but "
                f"{num_teachers} teachers were given: head i learns from teacher i, so give {student.num_heads} "
                "teachers (in the stage-1 order), or --per_teacher_heads false to merge the heads into one."
            )
        if not per_teacher_heads:
            logger.info(f"--per_teacher_heads false: merging the {student.num_heads} stage-1 heads into one.")
            student = student.merge_heads()
        model = student.model if isinstance(student, MultiHeadStudent) else student
        model.config.update(label_kwargs)
    elif model_args.student_layers:
        model = student = model_args.student_from_layers(num_labels, label_list)
    else:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=num_labels,
            finetuning_task=task.name,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
            **label_kwargs,
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
        student = model
    if task.is_regression:
        model.config.problem_type = "regression"
    readout = student.readout if isinstance(student, MultiHeadStudent) else model_args.readout
    if readout is None and not model_args.student_layers:
        readout = detect_readout(model_args.model_name_or_path, revision=model_args.model_revision)
    readout = readout or getattr(model.config, "tmkd_readout", None) or "cls"
    if per_teacher_heads and not isinstance(student, MultiHeadStudent):
        if num_teachers == 0:
            raise ValueError(
                "--per_teacher_heads needs teachers (one head per teacher): give --teachers or "
                "--teacher_logits_dir, or drop --per_teacher_heads."
            )
        student = MultiHeadStudent(model, num_heads=num_teachers, readout=readout)
    elif not isinstance(student, MultiHeadStudent) and readout == "mean":
        student = MultiHeadStudent(model, num_heads=1, readout="mean")  # one head on the mean of the states
    logger.info(
        f"Student: {type(model).__name__}, {model.config.num_hidden_layers} layers, "
        f"{student.num_heads if isinstance(student, MultiHeadStudent) else 1} head(s), readout {readout}; "
        f"teachers: {num_teachers}; "
        f"labels: {label_list}"
    )

    # ----- soft labels: every teacher once over the training rows, cached under output_dir (a rerun reuses it) -----
    if model_args.teachers and training_args.do_train:
        text_columns = columns["train"][0]
        cache_dir = os.path.join(training_args.output_dir, TEACHER_LOGITS_SUBDIR, "train")
        logger.info(
            f"Labelling {len(splits['train'])} training rows with {len(model_args.teachers)} teachers -> {cache_dir}"
        )
        splits["train"] = label_on_the_fly(
            splits["train"],
            model_args,
            training_args,
            text_columns=text_columns,
            cache_dir=cache_dir,
            max_length=data_args.max_seq_length,
            batch_size=training_args.per_device_eval_batch_size,
            # every process gets at least one shard: label_with_teachers' tokenization barrier is only entered by
            # processes with shards to label, so a process without any would fall out of step with the others
            shard_size=max(1, min(4096, math.ceil(len(splits["train"]) / training_args.world_size))),
            label_names_order=label_list,
        )

    # ----- tokenize (once, under main_process_first, cached by datasets) -----
    tokenizer = model_args.load_tokenizer()
    padding = "max_length" if data_args.pad_to_max_length else False

    def tokenized(dataset: Dataset, text_columns: list[str]) -> Dataset:
        return tokenize_texts(dataset, tokenizer, text_columns, data_args.max_seq_length, padding=padding,
                              overwrite_cache=data_args.overwrite_cache)

    with training_args.main_process_first(desc="dataset map pre-processing"):
        train_dataset = tokenized(splits["train"], columns["train"][0]) if "train" in splits else None
        eval_datasets = [(s, ds, tokenized(ds, columns["eval" + s][0])) for s, ds in splits["eval"]]
        predict_datasets = [(s, ds, tokenized(ds, columns["test" + s][0])) for s, ds in splits["test"]]

    def compute_metrics_for(raw: Dataset, role: str):
        group_column = columns[role][2]
        groups = list(raw[group_column]) if task.is_ranking and group_column else None
        return build_compute_metrics(task, label_list, groups=groups)

    trainer = MultiTeacherDistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_datasets[0][2] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithTeacherLogits(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None),
        compute_metrics=compute_metrics_for(eval_datasets[0][1], "eval") if eval_datasets else None,
    )
    task_label = data_args.task_name or "custom"
    all_metrics: dict = {}

    # ----- train -----
    if training_args.do_train:
        all_metrics.update(train_and_save_metrics(trainer, training_args, train_dataset))
        trainer.save_model()  # the merged plain checkpoint, with the tokenizer
        if export_args.export_onnx and trainer.is_world_process_zero():  # into output_dir: pushed with the model
            from tmkd_hf.export import export_onnx

            onnx_dir = os.path.join(training_args.output_dir, ONNX_SUBFOLDER)
            info = export_onnx(training_args.output_dir, onnx_dir, quantize=export_args.onnx_int8)
            logger.info(f"exported the student to {onnx_dir}: max |logit difference| to PyTorch "
                        f"{info['check']['max_abs_logit_diff_vs_torch']}")

    # ----- evaluate (MNLI: matched, then mismatched with the _mm suffix) -----
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        combined: dict = {}
        for suffix, raw, dataset in eval_datasets:
            trainer.compute_metrics = compute_metrics_for(raw, "eval" + suffix)
            metrics = trainer.evaluate(eval_dataset=dataset)
            metrics["eval_samples"] = len(dataset)
            if suffix == "-mm":
                metrics = {k + "_mm": v for k, v in metrics.items()}
            combined.update(metrics)
            trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", combined)
        all_metrics.update(combined)

    # ----- predict: predict_results_<task>.txt; metrics too when the rows are labelled -----
    if training_args.do_predict:
        logger.info("*** Predict ***")
        predict_metrics: dict = {}
        for suffix, raw, dataset in predict_datasets:
            labelled = "label" in dataset.column_names
            trainer.compute_metrics = compute_metrics_for(raw, "test" + suffix) if labelled else None
            output = trainer.predict(dataset, metric_key_prefix="predict")
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            predictions = logits.reshape(-1) if task.is_regression else np.argmax(logits, axis=1)
            if labelled:
                metrics = {**output.metrics, "predict_samples": len(dataset)}
                metrics = {k + ("_mm" if suffix else ""): v for k, v in metrics.items()}
                trainer.log_metrics("predict", metrics)
                predict_metrics.update(metrics)
            path = os.path.join(training_args.output_dir, f"predict_results_{task_label}{suffix}.txt")
            if trainer.is_world_process_zero():
                with open(path, "w") as writer:
                    logger.info(f"***** Predict results {task_label}{suffix} *****")
                    writer.write("index\tprediction\n")
                    for index, item in enumerate(predictions):
                        value = f"{item:3.3f}" if task.is_regression else label_list[item]
                        writer.write(f"{index}\t{value}\n")
        if predict_metrics:
            trainer.save_metrics("predict", predict_metrics)
            all_metrics.update(predict_metrics)

    # ----- model card, Hub -----
    kwargs = {
        "finetuned_from": model_args.model_name_or_path or model_args.student_init_from,
        "tasks": "text-classification",
        **dict(task.card),
    }
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    elif training_args.do_train:
        trainer.create_model_card(**kwargs)

    leave_process_group()  # every process waits for the writer, then leaves the group cleanly
    return (all_metrics, trainer) if return_trainer else all_metrics


def drop_unlabelled(dataset: Dataset, task: TaskSpec, what: str) -> Dataset:
    """Rows without a label (-1 or empty, encoded as -100 / NaN) left out, with a logged count."""
    labels = np.asarray(list(dataset["label"]), dtype=np.float64)
    keep = ~np.isnan(labels) if task.is_regression else labels != -100
    if keep.all():
        return dataset
    if not keep.any():
        raise ValueError(f"Every row of the {what} data is unlabelled (-1 or empty): there is nothing to score.")
    logger.warning(f"Dropping {int((~keep).sum())} unlabelled row(s) (label -1 or empty) of {len(dataset)} from the "
                   f"{what} data.")
    return dataset.select(np.flatnonzero(keep))


def _fully_labelled(dataset: Dataset, label_column: str, task: TaskSpec) -> bool:
    """Every row has a label (GLUE's test splits have none: -1)."""
    if task.is_regression:
        return all(v not in (None, "") and not (isinstance(v, float) and np.isnan(v)) for v in dataset[label_column])
    return all(v is not None for v in label_values(dataset, label_column, task))


if __name__ == "__main__":
    main()
