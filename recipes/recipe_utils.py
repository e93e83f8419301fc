"""Plumbing the recipes share, kept beside them as transformers' examples keep `utils_qa.py` beside `run_qa.py`.

A recipe run as a script (`python recipes/run_glue_distill.py`, `accelerate launch recipes/...`) finds this module
because its own folder is `sys.path[0]`; a recipe loaded by its path (tests, benchmarks, the pipeline) puts that
folder on `sys.path` before importing it.

What is here, and who uses it:

- `parse_recipe_args`: one JSON config, flags, or both (flags after the JSON path override its fields), or a dict from
  Python; every recipe.
- `StudentModelArguments`, `TextDataArguments`: the argument fields and checks both stage recipes have (the student,
  its teachers, the text and its tokenization); each recipe subclasses them with its own fields.
- `setup_run`: logging as `run_glue.py` sets it up, the process line, the seed; both stage recipes.
- `label_config`, `label_on_the_fly`, `tokenize_texts`, `train_and_save_metrics`: the steps both stage recipes
  (and the pipeline's teachers and baseline) take the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import transformers
from datasets import Dataset
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from tmkd_hf import label_with_teachers, student_from_teacher_layers
from tmkd_hf.onnx_teachers import BACKENDS
from tmkd_hf.teachers import check_argument_locations

TEACHER_LOGITS_SUBDIR = "teacher_logits"  # where a recipe caches the soft labels of teachers labelled on the fly


# ----- the command line -----


def parse_recipe_args(dataclass_types, argv: Sequence[str] | dict | None = None, program: str = "this recipe") -> tuple:
    """The recipes' command line, as `run_glue.py`'s: one JSON config path, flags, or both: flags after the JSON path
    override its fields (`config.json --learning_rate 3e-4`). From Python, `argv` may also be a dict of field
    values (what `run_tmkd_pipeline.py` gives the stage recipes). Returns one instance per dataclass, in order."""
    parser = HfArgumentParser(dataclass_types)
    if isinstance(argv, dict):
        return parser.parse_dict(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].endswith(".json"):
        if len(argv) == 1:
            return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        with open(argv[0]) as f:
            config = json.load(f)
        known = {f.name for t in parser.dataclass_types for f in dataclasses.fields(t) if f.init}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"{argv[0]} has fields {program} does not know: {unknown}.")
        parser.set_defaults(**config)
        for action in parser._actions:  # a required field the JSON file gives is no longer required as a flag
            if action.dest in config:
                action.required = False
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def check_text_column_count(text_columns: Sequence[str] | None, flag: str = "--text_columns") -> None:
    if text_columns is not None and not 1 <= len(text_columns) <= 2:
        raise ValueError(f"{flag} must name one or two columns, got {list(text_columns)}.")


# ----- the arguments both stage recipes have -----


@dataclass
class StudentModelArguments:
    """The student, and the teachers it learns from: the fields and checks of both stage recipes (each subclasses
    it as its `ModelArguments`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Student checkpoint (local dir or Hub id), or a multi-head student to continue."},
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
            "help": "Teachers labelled on the fly (checkpoint dirs, Hub ids id@revision, PEFT adapter dirs); their "
            f"logits are cached under output_dir/{TEACHER_LOGITS_SUBDIR} and reused by a rerun."
        },
    )
    teacher_logits_dir: str | None = field(
        default=None,
        metadata={
            "help": "The training rows already labelled by the teachers (a label_with_teachers / "
            "recipes/label_teachers.py dir)."
        },
    )
    readout: str | None = field(
        default=None,
        metadata={
            "help": "How the student reads out: 'cls' (the model's own head) or 'mean' (the mean of the last hidden "
            "states; exported as a sentence-transformers CrossEncoder). Default: what the checkpoint was trained "
            "with (a sentence-transformers backbone with mean pooling: 'mean'; otherwise 'cls').",
            "choices": ["cls", "mean"],
        },
    )
    teacher_dtype: str = field(
        default="float32",
        metadata={
            "help": "Teacher compute dtype when labelling on the fly.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    teacher_backend: str = field(
        default="torch",
        metadata={
            "help": "How the teachers run when labelling on the fly: torch, or exported once to ONNX (onnx, "
            "onnx-int8: 8-bit weights; onnx-int8-ffn-fp32: int8 with the feed-forward output layers in fp32) "
            "and run by onnxruntime (label_with_teachers(backend=...)).",
            "choices": list(BACKENDS),
        },
    )
    teacher_onnx_dir: str | None = field(
        default=None, metadata={"help": "Where the teachers' ONNX exports are kept (default: beside the soft labels)."}
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
        if self.student_init_from and not self.student_layers:
            raise ValueError("--student_init_from needs --student_layers (the layers to copy, e.g. 0 2 4).")
        if self.student_init_from and self.model_name_or_path:
            raise ValueError(
                "Give the student one way: --model_name_or_path, or --student_layers with --student_init_from "
                "(or with --model_name_or_path as the layer source), not both sources."
            )
        if not self.model_name_or_path and not self.student_init_from:
            raise ValueError(
                "No student: pass --model_name_or_path <checkpoint or multi-head (stage-1) student dir>, or "
                "--student_layers 0 2 4 --student_init_from <teacher>."
            )
        if self.student_layers is not None and len(self.student_layers) == 0:
            raise ValueError("--student_layers is empty: give the layer indices to copy, e.g. 0 2 4.")

    def check_locations(self) -> None:
        """A mistyped path fails first, naming its flag, before any tokenizer or model is loaded (at the start of
        `main`, not at parsing: a config may name models that only the machine it runs on has)."""
        check_argument_locations(self)

    @property
    def student_source(self) -> str:
        """Where the student comes from: the model whose layers are copied, or the checkpoint itself."""
        return self.student_init_from or self.model_name_or_path

    def hub_kwargs(self) -> dict:
        """`from_pretrained` keywords for the student (and its tokenizer)."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token}

    def load_tokenizer(self):
        return AutoTokenizer.from_pretrained(
            self.tokenizer_name or self.student_source,
            **self.hub_kwargs(),
            trust_remote_code=getattr(self, "trust_remote_code", False),
        )

    def student_from_layers(self, num_labels: int, label_list: Sequence[str] | None = None):
        """The student built from `--student_layers` of its source (`student_from_teacher_layers`, as DistilBERT)."""
        return student_from_teacher_layers(
            self.student_source,
            layers=list(self.student_layers),
            num_labels=num_labels,
            **self.hub_kwargs(),
            **label_config(label_list),
        )


@dataclass
class TextDataArguments:
    """The text columns and how they are tokenized: the data fields of both stage recipes (each subclasses it)."""

    text_columns: list[str] | None = field(default=None, metadata={"help": "One or two text columns."})
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized input; longer ones are truncated."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized datasets."})

    def __post_init__(self):
        check_text_column_count(self.text_columns)


# ----- the steps -----


def setup_run(logger: logging.Logger, training_args, verbose_libraries: bool = False) -> None:
    """Logging as `run_glue.py` sets it up, the process line, then the seed.

    `verbose_libraries`: transformers and datasets log at INFO on the main process unless `--log_level` says
    otherwise (`run_glue.py`'s default, stage 2); else they log at `--log_level` (default: warning) and only the
    recipe's own steps log at INFO on the main process (stage 1). `--disable_tqdm` also turns off the progress bars
    of datasets and transformers.
    """
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if verbose_libraries and training_args.should_log:
        transformers.utils.logging.set_verbosity_info()  # --log_level passive (the default) then means info
    log_level = training_args.get_process_log_level()  # --log_level on the main process, --log_level_replica else
    own_level = logging.INFO if training_args.should_log and not verbose_libraries else log_level
    logger.setLevel(own_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if training_args.disable_tqdm:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    logger.warning(
        f"Process rank: {training_args.local_process_index}, device: {training_args.device}, n_gpu: "
        f"{training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}"
    )
    set_seed(training_args.seed)


def label_config(label_list: Sequence[str] | None) -> dict:
    """`id2label` / `label2id` config keywords for labels named in id order (none for regression)."""
    if label_list is None:
        return {}
    return {"id2label": dict(enumerate(label_list)), "label2id": {name: i for i, name in enumerate(label_list)}}


def label_on_the_fly(
    rows: Dataset,
    model_args: StudentModelArguments,
    training_args,
    text_columns: Sequence[str],
    cache_dir: str,
    max_length: int,
    batch_size: int,
    shard_size: int,
    label_names_order: Sequence[str] | None = None,
) -> Dataset:
    """`rows` with the soft labels of `--teachers`, computed once and cached in `cache_dir` (under output_dir): a
    rerun on the same rows with the same teachers reuses the cache, anything else relabels it."""
    return label_with_teachers(
        rows,
        model_args.teachers,
        text_columns=tuple(text_columns),
        batch_size=batch_size,
        max_length=max_length,
        dtype=model_args.teacher_dtype,
        backend=model_args.teacher_backend,
        onnx_dir=model_args.teacher_onnx_dir,
        output_dir=cache_dir,
        shard_size=shard_size,
        label_names_order=label_names_order,
        overwrite=True,  # this run's own cache: the same rows and teachers are reused, anything else relabelled
        show_progress=not training_args.disable_tqdm,
    )


def tokenize_texts(
    dataset: Dataset,
    tokenizer,
    text_columns: Sequence[str],
    max_length: int,
    padding: bool | str = False,
    remove_text: bool = False,
    overwrite_cache: bool = False,
    desc: str = "Running tokenizer on dataset",
) -> Dataset:
    """The text columns tokenized as one input or a pair, truncated to `max_length` (at most the tokenizer's own
    limit); padding per batch by the collator unless `padding` says otherwise. `remove_text` drops the text
    columns. Batched `datasets.map`, cached by datasets: run it under `main_process_first`."""
    max_length = min(max_length, tokenizer.model_max_length)
    columns = list(text_columns)

    def preprocess(batch):
        texts = [["" if t is None else str(t) for t in batch[c]] for c in columns]
        return tokenizer(*texts, padding=padding, max_length=max_length, truncation=True)

    return dataset.map(
        preprocess,
        batched=True,
        remove_columns=columns if remove_text else None,
        load_from_cache_file=not overwrite_cache,
        desc=desc,
    )


def train_and_save_metrics(trainer, training_args, train_dataset) -> dict:
    """`trainer.train()` (from `--resume_from_checkpoint` if given), then, as `run_glue.py`, its metrics logged and
    saved (`train_results.json`, `all_results.json`) with `trainer_state.json`. Saving the model is the caller's."""
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {**result.metrics, "train_samples": len(train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics
