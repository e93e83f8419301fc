#!/usr/bin/env python
"""TMKD stage 1: Q&A distillation pre-training of a multi-head student on UNLABELLED question–passage pairs.

The student has one head per teacher and learns from the teachers' soft labels only (`alpha = 1`): no golden
labels are read, and label columns in the pool are ignored. The result is the starting point of stage 2
(`recipes/run_glue_distill.py --model_name_or_path <output_dir>`, which continues with every head).

    # teachers labelled on the fly (the soft labels are cached in output_dir/teacher_logits; a rerun reuses them)
    python recipes/run_qa_distill_pretrain.py --dataset data/qnli/unlabeled.tsv --teachers t0 t1 t2 \\
        --student_layers 0 2 4 --student_init_from t0 --output_dir out/stage1 --num_train_epochs 2
    # a pool labelled once by recipes/label_teachers.py
    python recipes/run_qa_distill_pretrain.py --teacher_logits_dir labelled/pool --model_name_or_path small-bert \\
        --output_dir out/stage1
    # LoRA on the encoder (the heads train in full); one JSON file with every field; several processes
    python recipes/run_qa_distill_pretrain.py ... --use_peft --lora_r 8
    python recipes/run_qa_distill_pretrain.py recipes/configs/stage1_qnli.json   # or stage1_qnli_lora.json
    accelerate launch --multi_gpu --num_processes 2 recipes/run_qa_distill_pretrain.py recipes/configs/stage1_qnli.json

The `recipes/configs/stage1_qnli*.json` configs read the QNLI pool shipped in `data/qnli/unlabeled.tsv` and the
teachers that `recipes/run_tmkd_pipeline.py` trains (`outputs/tmkd-pipeline-qnli/teachers/teacher_{0,1,2}`).

What it writes to `--output_dir`:

- the multi-head student (`tmkd_student.json` + `model.safetensors`, every head; LoRA, if used, already merged into
  the encoder's weights) and its tokenizer: reload with `MultiHeadStudent.from_pretrained(output_dir)`;
- `merged/`: the same student with its heads folded into one: a plain `AutoModelForSequenceClassification` checkpoint
  ([CLS] readout) or a sentence-transformers `CrossEncoder` (mean readout);
- `teacher_logits/` (with `--teachers`): the soft-label cache and its manifest;
- `checkpoint-*/` (per `--save_strategy`): full training checkpoints (every head, LoRA matrices unmerged), for
  `--resume_from_checkpoint`;
- `train_results.json`, `eval_results.json`, `all_results.json`, `trainer_state.json`;
- `README.md`: the model card of a stage-1 student (`model_cards/tmkd_stage1_card.md`): a general Q&A distillation
  pre-trained student, not a task model; its teachers, the pool and its size, layers and parameters, readout, the
  per-teacher heads, and the `run_glue_distill.py` command that continues every head.

`--push_to_hub` (with `--hub_model_id`, `--hub_token`, `--hub_private_repo`, `--hub_revision`) publishes the stage-1
student as a model of its own, so others can start stage 2 from it without retraining stage 1: the repo root is the
multi-head student (every head, what `run_glue_distill.py --model_name_or_path <repo id>` and the pipeline's
`stage1_student` continue from; loading it needs tmkd_hf), `merged/` the merged copy (loads without tmkd_hf), and the
card. It is pushed once, at the end (no checkpoint pushes; the soft-label cache and checkpoints stay local).

With `--validation_split_percentage P`, P% of the pool is held out and reported: `eval_loss` (the soft loss) and
the agreement of the student's prediction with the teachers' weighted ensemble (`eval_teacher_agreement`) and with
each teacher (`eval_teacher_<i>_agreement`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import transformers
from datasets import Dataset
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from tmkd_hf import (
    DistillationArguments,
    LoraStudentArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    apply_lora,
    label_with_teachers,
    load_teacher_logits,
    merge_lora,
    read_manifest,
    student_from_teacher_layers,
    tasks,
)
from tmkd_hf.collator import TEACHER_LOGITS
from tmkd_hf.cross_encoder import is_cross_encoder_dir
from tmkd_hf.distributed import leave_process_group
from tmkd_hf.hub import create_repo, published_num_parameters, trainer_card_data, upload_student_folder
from tmkd_hf.model_card import TeacherInfo, _is_hub_id, write_model_card
from tmkd_hf.modeling import STUDENT_CONFIG_NAME
from tmkd_hf.teachers import check_argument_locations

logger = logging.getLogger(__name__)

LABEL_COLUMNS = tasks.LABEL_COLUMNS  # the golden-label columns, defined once in tmkd_hf.tasks
MERGED_SUBDIR = "merged"
TEACHER_LOGITS_SUBDIR = "teacher_logits"
# what stays local when the stage-1 student is pushed: the soft-label cache, training checkpoints, logs
NOT_PUSHED = ["_*", "checkpoint-*", f"{TEACHER_LOGITS_SUBDIR}/*", "runs/*"]


@dataclass
class ModelArguments:
    """The student, and the teachers it learns from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Student checkpoint (local dir or Hub id; its final layer is replicated once per teacher), or a "
            f"multi-head student dir (it has {STUDENT_CONFIG_NAME}) to continue. With --student_layers: the model "
            "whose layers are copied."
        },
    )
    student_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Build the student from these layers of --student_init_from (e.g. 0 2 4), as DistilBERT."},
    )
    student_init_from: str | None = field(
        default=None, metadata={"help": "Model whose layers --student_layers copies (default: --model_name_or_path)."}
    )
    teachers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Teachers that label the pool on the fly (checkpoint dirs, Hub ids id@revision, PEFT adapters); "
            f"their logits are cached in output_dir/{TEACHER_LOGITS_SUBDIR} and reused by a rerun."
        },
    )
    teacher_logits_dir: str | None = field(
        default=None,
        metadata={"help": "The pool already labelled by the teachers (a label_with_teachers / label_teachers.py dir)."},
    )
    teacher_dtype: str = field(
        default="float32",
        metadata={
            "help": "Teacher compute dtype when labelling on the fly.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    readout: str | None = field(
        default=None,
        metadata={
            "help": "'cls' or 'mean' (the mean of the last hidden states, exported as a CrossEncoder). Default: what "
            "the student's checkpoint was trained with.",
            "choices": ["cls", "mean"],
        },
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "The student's tokenizer, if not its model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub models and datasets are cached."})
    model_revision: str = field(default="main", metadata={"help": "Revision (branch, tag, commit) of the student."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the one from `hf auth login`)."})

    def __post_init__(self):
        if self.teachers is not None and len(self.teachers) == 0:
            self.teachers = None
        if self.teachers and self.teacher_logits_dir:
            raise ValueError(
                "Give the teachers one way: --teachers (labelled on the fly) or --teacher_logits_dir (already "
                "labelled), not both."
            )
        if not self.teachers and not self.teacher_logits_dir:
            raise ValueError(
                "Stage 1 learns from teachers only: give --teachers <dir or Hub id> ... (labelled on the fly) or "
                "--teacher_logits_dir <labelled pool>."
            )
        if self.student_init_from and not self.student_layers:
            raise ValueError("--student_init_from needs --student_layers (the layers to copy, e.g. 0 2 4).")
        if self.student_init_from and self.model_name_or_path:
            raise ValueError(
                "Give the student one way: --model_name_or_path, or --student_layers with --student_init_from "
                "(or with --model_name_or_path as the layer source), not both sources."
            )
        if not self.model_name_or_path and not self.student_init_from:
            raise ValueError(
                "No student: pass --model_name_or_path <checkpoint or multi-head student dir>, or --student_layers "
                "0 2 4 --student_init_from <teacher>."
            )
        if self.student_layers is not None and len(self.student_layers) == 0:
            raise ValueError("--student_layers is empty: give the layer indices to copy, e.g. 0 2 4.")

    def check_locations(self) -> None:
        """A mistyped path fails first, naming its flag, before any tokenizer or model is loaded (at the start of
        `main`, not at parsing: a config may name models that only the machine it runs on has)."""
        check_argument_locations(self)


@dataclass
class DataArguments:
    """The unlabelled pool of question–passage pairs."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "The pool: a .json/.jsonl/.csv/.tsv (tab separated, no quoting)/.parquet file, a save_to_disk dir "
            "or a Hub dataset. Rows with labels are fine: stage 1 ignores the labels (soft labels only). Not needed "
            "with --teacher_logits_dir (the labelled dir holds the text); if given, its rows must be the labelled ones."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset or saved DatasetDict."})
    text_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "One or two text columns (question, passage). Default: those of --teacher_logits_dir's manifest, "
            "else question sentence."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input; longer ones are truncated."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows of the pool."})
    validation_split_percentage: float = field(
        default=0.0,
        metadata={"help": "Percent of the pool held out to report the soft loss and agreement with the teachers."},
    )
    labelling_batch_size: int = field(default=64, metadata={"help": "Teacher batch size when labelling on the fly."})
    labelling_shard_size: int = field(
        default=4096, metadata={"help": "Rows per labelling shard (the unit of resumption and of the work split)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized datasets."})
    augment_copies: int = field(
        default=0,
        metadata={
            "help": "Add N augmented copies of the pool before labelling (tmkd_hf.augmentation: words replaced by "
            "their embedding neighbours, passages re-paired); the teachers label them like the rest."
        },
    )
    augment_replace_prob: float = field(default=0.3, metadata={"help": "Per-word replacement probability."})
    augment_repair_prob: float = field(
        default=0.0, metadata={"help": "Probability that a copy's passage is swapped for another question's."}
    )
    augment_neighbours_from: str | None = field(
        default=None,
        metadata={"help": "Model whose input embeddings give the word neighbours (default: the student's backbone)."},
    )

    def __post_init__(self):
        if self.augment_copies < 0:
            raise ValueError(f"--augment_copies must be >= 0, got {self.augment_copies}.")
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"--text_columns must name one or two columns, got {self.text_columns}.")
        if not 0.0 <= self.validation_split_percentage < 100.0:
            raise ValueError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}."
            )
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max_train_samples must be >= 1, got {self.max_train_samples}.")
        if self.max_seq_length < 2:
            raise ValueError(f"--max_seq_length must be >= 2, got {self.max_seq_length}.")


@dataclass
class Stage1Arguments(DistillationArguments):
    """`DistillationArguments` for stage 1: soft labels only, so `alpha` is 1.0 (and may not be set otherwise)."""

    alpha: float = field(
        default=1.0,
        metadata={"help": "Must be 1.0 in stage 1: the student learns from the teachers' soft labels only."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.alpha != 1.0:
            raise ValueError(
                f"Stage 1 learns from the teachers' soft labels only: alpha must be 1.0, got {self.alpha}. Golden "
                "labels are for stage 2 (recipes/run_glue_distill.py --alpha ...)."
            )


def parse_args(argv: list[str] | None = None):
    """One JSON config path (like run_glue.py), or command-line flags."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, Stage1Arguments, LoraStudentArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def load_pool(data_args: DataArguments, cache_dir: str | None) -> Dataset:
    """The pool as one `Dataset`: a local file, a `save_to_disk` dir or a Hub dataset (clear errors otherwise)."""
    return tasks.load_rows(
        data_args.dataset, split=data_args.split, config_name=data_args.dataset_config_name, cache_dir=cache_dir
    )


def check_text_columns(dataset: Dataset, text_columns: list[str], what: str) -> None:
    missing = [c for c in text_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{what} has no column {missing} (its columns: {dataset.column_names}). Name the question and passage "
            "columns with --text_columns <question column> <passage column>."
        )


def with_augmented_copies(pool: Dataset, text_columns: list[str], data_args, model_args) -> Dataset:
    """The pool's text columns followed by `--augment_copies` augmented copies (deterministic, seed 0)."""
    from tmkd_hf.augmentation import augment_pairs, word_neighbours

    source = (data_args.augment_neighbours_from or model_args.student_init_from or model_args.model_name_or_path
              or model_args.teachers[0])
    neighbours = word_neighbours(source, cache_dir=model_args.cache_dir) if data_args.augment_replace_prob else None
    extra = augment_pairs(pool, text_columns=tuple(text_columns), copies=data_args.augment_copies,
                          neighbours=neighbours, replace_prob=data_args.augment_replace_prob,
                          repair_prob=data_args.augment_repair_prob)
    logger.info(f"Pool: {len(pool)} rows + {len(extra)} augmented ({data_args.augment_copies} copies, words from "
                f"{source}: {dict(Counter(extra['augmentation']))})")
    pool = pool.select_columns(text_columns)
    return datasets.concatenate_datasets([pool, extra.select_columns(text_columns).cast(pool.features)])


def teacher_agreement(student_logits: np.ndarray, teacher_logits: np.ndarray, weights: list[float]) -> dict:
    """How often the student's prediction is the teachers' weighted-ensemble prediction, and each teacher's."""
    predicted = student_logits.argmax(-1)
    ensemble = np.einsum("nhc,h->nc", teacher_logits, np.asarray(weights, dtype=np.float64)).argmax(-1)
    metrics = {"teacher_agreement": float((predicted == ensemble).mean())}
    for i in range(teacher_logits.shape[1]):
        metrics[f"teacher_{i}_agreement"] = float((predicted == teacher_logits[:, i].argmax(-1)).mean())
    return metrics


def stage1_card_data(trainer, saved, source: str, pool: dict, manifest: dict, metrics: dict, repo_id: str | None):
    """What the stage-1 card says, gathered as for any student (`trainer_card_data`), as a stage-1 card: the pool,
    the teachers from its manifest, the saved student's sizes (every head, and merged), the held-out agreement."""
    card = trainer_card_data(
        trainer,
        finetuned_from=source,
        dataset_tags=pool["name"] if _is_hub_id(pool["name"]) else None,
    )
    card.kind, card.model_id = "stage1", repo_id
    card.stage = "stage 1: Q&A distillation pre-training (the teachers' soft labels only, alpha 1, no golden labels)"
    card.teachers = TeacherInfo.from_manifest(manifest)
    card.train_datasets = [{k: v for k, v in pool.items() if v is not None}]
    card.num_heads = saved.num_heads
    card.num_parameters_all_heads = sum(p.numel() for p in saved.parameters())
    card.num_parameters = published_num_parameters(saved)
    agreement = {k[len("eval_"):]: v for k, v in metrics.items() if k.startswith("eval_") and k.endswith("agreement")}
    card.eval_results = {"held-out pool": agreement} if agreement else {}
    return card


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, lora_args = parse_args(argv)
    model_args.check_locations()

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()  # --log_level / --log_level_replica (default: warning)
    logger.setLevel(logging.INFO if training_args.should_log else log_level)  # this recipe's steps, main process
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if training_args.disable_tqdm:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    logger.warning(
        f"Process rank: {training_args.local_process_index}, device: {training_args.device}, distributed training: "
        f"{training_args.parallel_mode.value == 'distributed'}"
    )
    set_seed(training_args.seed)
    # The trainer's own pushes would put a merged model at the repo root during training (and on save_model); stage 1
    # publishes its multi-head student once, at the end, with its own card.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub and training_args.hub_strategy != "every_save":
        logger.warning(f"--hub_strategy {training_args.hub_strategy} is not applied in stage 1: the student is pushed "
                       "once, at the end, with every head (checkpoints stay local).")

    # ----- the pool, with the teachers' soft labels (from a labelled dir, or labelled now and cached) -----
    pool = load_pool(data_args, model_args.cache_dir) if data_args.dataset else None
    if model_args.teacher_logits_dir and data_args.augment_copies:
        raise ValueError(
            "--augment_copies augments the pool before the teachers label it; --teacher_logits_dir is already "
            "labelled. Label the augmented pool with the teachers (--teachers ...), or drop --augment_copies."
        )
    if model_args.teacher_logits_dir:
        labelled = load_teacher_logits(model_args.teacher_logits_dir, pool)  # with --dataset: the same rows?
        manifest = read_manifest(model_args.teacher_logits_dir)
        text_columns = list(data_args.text_columns or manifest["text_columns"])
        check_text_columns(labelled, text_columns, f"--teacher_logits_dir {model_args.teacher_logits_dir}")
    else:
        if pool is None:
            raise ValueError("--teachers labels a pool: give it with --dataset <file, save_to_disk dir or Hub name>.")
        text_columns = list(data_args.text_columns or ["question", "sentence"])
        check_text_columns(pool, text_columns, f"--dataset {data_args.dataset}")
        if data_args.max_train_samples is not None:  # label only the rows that will be used
            pool = pool.select(range(min(data_args.max_train_samples, len(pool))))
        if data_args.augment_copies:
            pool = with_augmented_copies(pool, text_columns, data_args, model_args)
        cache = os.path.join(training_args.output_dir, TEACHER_LOGITS_SUBDIR)
        logger.info(f"Soft labels of {len(pool)} rows from {len(model_args.teachers)} teachers -> {cache}")
        labelled = label_with_teachers(
            pool,
            model_args.teachers,
            text_columns=tuple(text_columns),
            batch_size=data_args.labelling_batch_size,
            max_length=data_args.max_seq_length,
            dtype=model_args.teacher_dtype,
            output_dir=cache,
            shard_size=data_args.labelling_shard_size,
            overwrite=True,  # this run's own cache: the same rows and teachers are reused, anything else relabelled
            show_progress=not training_args.disable_tqdm,
        )
        manifest = read_manifest(cache)
    if TEACHER_LOGITS not in labelled.column_names:
        raise ValueError(f"The labelled pool has no '{TEACHER_LOGITS}' column: label it with label_with_teachers.")
    if data_args.max_train_samples is not None:
        labelled = labelled.select(range(min(data_args.max_train_samples, len(labelled))))
    if len(labelled) == 0:
        raise ValueError("The pool is empty: stage 1 needs question–passage pairs to learn from.")
    label_list = [str(name) for name in manifest["label_names"]]
    num_teachers = len(manifest["teachers"])
    labels_present = [c for c in LABEL_COLUMNS if c in labelled.column_names]
    if labels_present:
        logger.info(f"Ignoring the label column(s) {labels_present}: stage 1 learns from the soft labels only.")
    labelled = labelled.select_columns(text_columns + [TEACHER_LOGITS])

    # ----- held-out part of the pool -----
    eval_raw = None
    if data_args.validation_split_percentage > 0:
        with training_args.main_process_first(desc="validation split"):
            split = labelled.train_test_split(
                test_size=data_args.validation_split_percentage / 100, seed=training_args.seed, shuffle=True
            )
        labelled, eval_raw = split["train"], split["test"]
    logger.info(
        f"Pool: {len(labelled)} training rows{f', {len(eval_raw)} held out' if eval_raw is not None else ''}; "
        f"{num_teachers} teachers; labels {label_list}; text columns {text_columns}"
    )

    # ----- the student: one head per teacher, labels in the teachers' order -----
    label_kwargs = {"id2label": dict(enumerate(label_list)), "label2id": {n: i for i, n in enumerate(label_list)}}
    hub_kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    source = model_args.student_init_from or model_args.model_name_or_path
    if model_args.student_layers:
        model = student_from_teacher_layers(
            source, layers=list(model_args.student_layers), num_labels=len(label_list), **hub_kwargs, **label_kwargs
        )
        student = MultiHeadStudent(model, num_heads=num_teachers, readout=model_args.readout)
    elif os.path.isfile(os.path.join(source, STUDENT_CONFIG_NAME)):
        student = MultiHeadStudent.from_pretrained(source, num_teachers=num_teachers, num_labels=len(label_list),
                                                   readout=model_args.readout)
    elif is_cross_encoder_dir(source):  # a one-head mean-readout export: every head starts from its Dense layer
        student = MultiHeadStudent.from_pretrained(source, num_labels=len(label_list), readout=model_args.readout)
        student = student.with_heads(num_teachers) if student.num_heads != num_teachers else student
    else:
        student = MultiHeadStudent.from_pretrained(
            source, num_teachers=num_teachers, num_labels=len(label_list), readout=model_args.readout, **hub_kwargs,
            **label_kwargs
        )
    if student.lora_settings:  # a LoRA training checkpoint given as --model_name_or_path: it keeps its adapters
        logger.info(f"Continuing with the student's own LoRA adapters ({student.lora_settings}).")
    elif lora_args.use_peft:
        student = apply_lora(student, lora_args)
    logger.info(
        f"Student: {type(student.model).__name__}, {student.config.num_hidden_layers} layers, {student.num_heads} "
        f"heads; {sum(p.numel() for p in student.parameters() if p.requires_grad):,} trainable parameters"
    )

    # ----- tokenize once, on the main process first (the others read datasets' cache) -----
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or source, **hub_kwargs)
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def tokenized(dataset: Dataset) -> Dataset:
        def preprocess(batch):
            texts = [["" if t is None else str(t) for t in batch[c]] for c in text_columns]
            return tokenizer(*texts, truncation=True, max_length=max_seq_length)

        return dataset.map(
            preprocess,
            batched=True,
            remove_columns=text_columns,
            load_from_cache_file=not data_args.overwrite_cache,
            desc="Tokenizing the pool",
        )

    with training_args.main_process_first(desc="tokenizing"):
        train_dataset = tokenized(labelled)
        eval_dataset = tokenized(eval_raw) if eval_raw is not None else None

    # ----- train -----
    trainer = MultiTeacherDistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {**train_result.metrics, "train_samples": len(train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    # ----- evaluate on the held-out pool: soft loss, agreement with the teachers -----
    if eval_dataset is not None:
        output = trainer.predict(eval_dataset, metric_key_prefix="eval")
        teacher_logits = np.asarray(list(eval_dataset[TEACHER_LOGITS]), dtype=np.float32)
        weights = training_args.normalized_teacher_weights(num_teachers)
        eval_metrics = {k: v for k, v in output.metrics.items() if not k.endswith("_per_second")}
        eval_metrics.update(
            {f"eval_{k}": v for k, v in teacher_agreement(output.predictions, teacher_logits, weights).items()}
        )
        eval_metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # ----- save: every head (stage 2 starts here), and the merged plain model -----
    merged_dir = os.path.join(training_args.output_dir, MERGED_SUBDIR)
    trainer.save_model(merged_dir)  # LoRA and heads merged: a plain checkpoint or a CrossEncoder
    if training_args.should_save:
        saved = merge_lora(student)
        saved.save_pretrained(training_args.output_dir)  # every head; LoRA folded into the encoder
        tokenizer.save_pretrained(training_args.output_dir)
        logger.info(
            f"Stage-1 student with {student.num_heads} heads in {training_args.output_dir} (reload with "
            f"MultiHeadStudent.from_pretrained; stage 2: --model_name_or_path {training_args.output_dir}); merged "
            f"copy in {merged_dir}"
        )
        # ----- the card of a stage-1 student, and the push: the folder as saved, every head at the root -----
        repo_id = None
        if push_to_hub:
            repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
            repo_id = create_repo(repo_id, token=training_args.hub_token, private=training_args.hub_private_repo,
                                  saved_dir=training_args.output_dir)  # the full id (namespace added), for the card
        pool_name = data_args.dataset or model_args.teacher_logits_dir
        pool = {  # a local pool by its file or folder name: the card is published, the machine's paths are not
            "name": pool_name if _is_hub_id(pool_name) else Path(pool_name).name,
            "rows": len(labelled) + (len(eval_raw) if eval_raw is not None else 0),
            "trained on": len(labelled),
            "held out": len(eval_raw) if eval_raw is not None else None,
            "augmented copies": data_args.augment_copies or None,
            "text columns": text_columns,
        }
        card = stage1_card_data(trainer, saved, source, pool, manifest, metrics, repo_id)
        write_model_card(training_args.output_dir, card)
        if push_to_hub:
            upload_student_folder(
                training_args.output_dir,
                repo_id,
                token=training_args.hub_token,
                revision=training_args.hub_revision,
                private=training_args.hub_private_repo,
                commit_message="Upload TMKD stage-1 student (every head; merged/ merged)",
                ignore_patterns=NOT_PUSHED,
                multi_head=True,
            )
            logger.info(f"Pushed the stage-1 student to {repo_id}; stage 2: --model_name_or_path {repo_id}")

    leave_process_group()  # every rank waits for the writer, then leaves the process group cleanly
    return metrics


if __name__ == "__main__":
    main()
