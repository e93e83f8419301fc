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
from datasets import Dataset

from tmkd_hf import (
    DistillationArguments,
    LoraStudentArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    apply_lora,
    load_teacher_logits,
    merge_lora,
    read_manifest,
    tasks,
)
from tmkd_hf.collator import TEACHER_LOGITS
from tmkd_hf.cross_encoder import is_cross_encoder_dir
from tmkd_hf.distributed import leave_process_group
from tmkd_hf.hub import create_repo, upload_student_folder
from tmkd_hf.model_card import StudentCardData, TeacherInfo, _is_hub_id, published_num_parameters, write_model_card
from tmkd_hf.modeling import STUDENT_CONFIG_NAME
from tmkd_hf.peft_student import LoraMultiHeadStudent

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

LABEL_COLUMNS = tasks.LABEL_COLUMNS  # the golden-label columns, defined once in tmkd_hf.tasks
MERGED_SUBDIR = "merged"
# what stays local when the stage-1 student is pushed: the soft-label cache, training checkpoints, logs
NOT_PUSHED = ["_*", "checkpoint-*", f"{TEACHER_LOGITS_SUBDIR}/*", "runs/*"]


@dataclass
class ModelArguments(StudentModelArguments):
    """The student, and the teachers it learns from (the fields both stage recipes have, `StudentModelArguments`);
    stage 1 needs teachers."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Student checkpoint (local dir or Hub id; its final layer is replicated once per teacher), or a "
            f"multi-head student dir (it has {STUDENT_CONFIG_NAME}) to continue. With --student_layers: the model "
            "whose layers are copied."
        },
    )

    def __post_init__(self):
        if not self.teachers and not self.teacher_logits_dir:
            raise ValueError(
                "Stage 1 learns from teachers only: give --teachers <dir or Hub id> ... (labelled on the fly) or "
                "--teacher_logits_dir <labelled pool>."
            )
        super().__post_init__()


@dataclass
class DataArguments(TextDataArguments):
    """The unlabelled pool of question–passage pairs (and the text fields both stage recipes have,
    `TextDataArguments`)."""

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
    validation_split_percentage: float = field(
        default=0.0,
        metadata={"help": "Percent of the pool held out to report the soft loss and agreement with the teachers."},
    )
    labelling_batch_size: int = field(default=64, metadata={"help": "Teacher batch size when labelling on the fly."})
    labelling_shard_size: int = field(
        default=4096, metadata={"help": "Rows per labelling shard (the unit of resumption and of the work split)."}
    )
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
        super().__post_init__()
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


def parse_args(argv: list[str] | dict | None = None):
    """One JSON config path (like run_glue.py), command-line flags, or both (`recipe_utils.parse_recipe_args`)."""
    return parse_recipe_args(
        (ModelArguments, DataArguments, Stage1Arguments, LoraStudentArguments), argv, "run_qa_distill_pretrain.py"
    )


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
    """What the stage-1 card says, gathered as for any student (`StudentCardData.from_trainer`), as a stage-1 card:
    the pool, the teachers from its manifest, the saved student's sizes (every head, and merged), the held-out
    agreement."""
    card = StudentCardData.from_trainer(
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


def main(argv: list[str] | dict | None = None) -> dict:
    """The run; returns its metrics (train, and eval with --validation_split_percentage)."""
    model_args, data_args, training_args, lora_args = parse_args(argv)
    model_args.check_locations()
    setup_run(logger, training_args)  # libraries at --log_level (default: warning), this recipe's steps at info
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
        labelled = label_on_the_fly(
            pool,
            model_args,
            training_args,
            text_columns=text_columns,
            cache_dir=cache,
            max_length=data_args.max_seq_length,
            batch_size=data_args.labelling_batch_size,
            shard_size=data_args.labelling_shard_size,
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
    source = model_args.student_source
    if model_args.student_layers:
        model = model_args.student_from_layers(len(label_list), label_list)
        student = MultiHeadStudent(model, num_heads=num_teachers, readout=model_args.readout)
    elif os.path.isfile(os.path.join(source, STUDENT_CONFIG_NAME)):
        student = MultiHeadStudent.from_pretrained(source, num_teachers=num_teachers, num_labels=len(label_list),
                                                   readout=model_args.readout)
    elif is_cross_encoder_dir(source):  # a one-head mean-readout export: every head starts from its Dense layer
        student = MultiHeadStudent.from_pretrained(source, num_labels=len(label_list), readout=model_args.readout)
        student = student.with_heads(num_teachers) if student.num_heads != num_teachers else student
    else:
        student = MultiHeadStudent.from_pretrained(
            source, num_teachers=num_teachers, num_labels=len(label_list), readout=model_args.readout,
            **model_args.hub_kwargs(), **label_config(label_list)
        )
    if isinstance(student, LoraMultiHeadStudent):  # a LoRA checkpoint given as --model_name_or_path keeps its adapters
        logger.info(f"Continuing with the student's own LoRA adapters ({student.lora_settings}).")
    elif lora_args.use_peft:
        student = apply_lora(student, lora_args)
    logger.info(
        f"Student: {type(student.model).__name__}, {student.config.num_hidden_layers} layers, {student.num_heads} "
        f"heads; {sum(p.numel() for p in student.parameters() if p.requires_grad):,} trainable parameters"
    )

    # ----- tokenize once, on the main process first (the others read datasets' cache) -----
    tokenizer = model_args.load_tokenizer()

    def tokenized(dataset: Dataset) -> Dataset:
        return tokenize_texts(dataset, tokenizer, text_columns, data_args.max_seq_length, remove_text=True,
                              overwrite_cache=data_args.overwrite_cache, desc="Tokenizing the pool")

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
    metrics = train_and_save_metrics(trainer, training_args, train_dataset)

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
