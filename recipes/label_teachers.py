#!/usr/bin/env python
"""Label a dataset with N teachers once and save it with its `teacher_logits` column and manifest.

    python recipes/label_teachers.py --dataset data/qnli/unlabeled.tsv --teachers t1 t2 t3 \\
        --text_columns question sentence --output_dir labelled/qnli-unlabeled
    accelerate launch --num_processes 2 recipes/label_teachers.py ...   # shards split across processes

    # a pool in shards: files or globs (.tsv/.csv/.jsonl/.json/.parquet, .gz etc. too), ONNX int8 teachers
    python recipes/label_teachers.py --dataset '../shared/data/squad_pool/*.tsv.gz' --teachers t1 t2 \
        --teacher_backend onnx-int8 --teacher_onnx_dir exports --output_dir labelled/squad-pool

`--dataset` is one or more data files or globs (read one file at a time, each file's soft labels cached apart and
keyed by its sha256: `tmkd_hf.pool`), a `save_to_disk` directory, or a Hub dataset name (`--dataset_config`,
`--split`). A killed run resumes from its finished files and shards when started again; a file that changed is
relabelled, the others reused.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import transformers
from datasets import Dataset

from tmkd_hf import label_with_teachers, tasks, use_fixed_mmap_threshold
from tmkd_hf.distributed import leave_process_group
from tmkd_hf.onnx_teachers import BACKENDS
from tmkd_hf.pool import resolve_data_files

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # loaded by its path: recipe_utils.py is beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_utils import parse_recipe_args  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class LabellingArguments:
    dataset: list[str] = field(
        metadata={
            "help": "Data files or globs (.json/.jsonl/.csv/.tsv/.parquet, optionally .gz/.bz2/.xz/.zst; quote a "
            "glob), a save_to_disk dir or a Hub dataset name."
        }
    )
    teachers: list[str] = field(
        metadata={"help": "Teacher checkpoints: local dirs, Hub ids (id@revision) or PEFT adapter dirs."}
    )
    output_dir: str = field(metadata={"help": "Where the labelled dataset (save_to_disk) and manifest go."})
    text_columns: list[str] = field(
        default_factory=lambda: ["question", "sentence"], metadata={"help": "One or two text columns."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Split to label (Hub datasets and dataset dicts)."})
    max_rows: int | None = field(default=None, metadata={"help": "Label only the first N rows (quick trials)."})
    batch_size: int = field(default=64, metadata={"help": "Teacher batch size."})
    max_length: int = field(default=128, metadata={"help": "Truncation length of the teachers' inputs."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Teacher compute dtype (logits are stored in float32).",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    shard_size: int = field(default=4096, metadata={"help": "Rows per shard: the unit of resumption and work split."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a cache in output_dir built from other data."})
    teacher_backend: str = field(
        default="torch",
        metadata={
            "help": "How the teachers run: torch, or exported once to ONNX and run by onnxruntime (onnx: fp32, "
            "onnx-int8: 8-bit weights; onnx-int8-ffn-fp32: the same with the feed-forward output layers in fp32, "
            "closer to fp32; pip install \"tmkd_hf[onnx]\").",
            "choices": list(BACKENDS),
        },
    )
    teacher_onnx_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the teachers' ONNX exports are kept and found again (default: output_dir/onnx_teachers)."
        },
    )
    fixed_mmap_threshold: bool = field(
        default=False,
        metadata={
            "help": "Fix glibc's mmap threshold at 128 KiB for this process (tmkd_hf.use_fixed_mmap_threshold): a "
            "little less memory (+62 MB instead of +81 MB of peak RSS from 10k to 100k rows) for 1.32x the labelling "
            "time (benchmarks/RESULTS.md). Only when memory, not time, is short. No effect outside glibc."
        },
    )


def data_files(args: LabellingArguments) -> list[str] | None:
    """The data files `--dataset` names, when it names files or globs (labelled one file at a time); else None."""
    names = [args.dataset] if isinstance(args.dataset, str) else list(args.dataset)
    if args.max_rows is not None and len(names) == 1:
        return None  # a trial on the first rows: read as one dataset
    try:
        return resolve_data_files(names)
    except (FileNotFoundError, ValueError):
        if len(names) > 1 or any(c in names[0] for c in "*?["):
            raise
        return None  # a save_to_disk dir or a Hub dataset name


def load_rows(args: LabellingArguments) -> Dataset:
    """The rows to label (`tmkd_hf.tasks.load_rows`: GLUE-style TSVs are read without quoting)."""
    (name,) = [args.dataset] if isinstance(args.dataset, str) else args.dataset
    return tasks.load_rows(name, split=args.split, config_name=args.dataset_config, max_rows=args.max_rows)


def main(argv: list[str] | dict | None = None) -> Dataset:
    (args,) = parse_recipe_args(LabellingArguments, argv, "label_teachers.py")
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()

    if args.fixed_mmap_threshold:
        fixed = use_fixed_mmap_threshold()
        logger.info("malloc mmap threshold " + ("fixed at 128 KiB" if fixed else "left dynamic (not glibc)"))
    files = data_files(args)
    if files is not None:
        dataset = files
        logger.info(f"Labelling {len(files)} file(s) ({', '.join(os.path.basename(f) for f in files)}) with "
                    f"{len(args.teachers)} teachers, backend {args.teacher_backend}")  # fmt: skip
    else:
        dataset = load_rows(args)
        logger.info(f"Labelling {len(dataset)} rows of {args.dataset} with {len(args.teachers)} teachers")
    labelled = label_with_teachers(
        dataset,
        args.teachers,
        text_columns=tuple(args.text_columns),
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        output_dir=args.output_dir,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        backend=args.teacher_backend,
        onnx_dir=args.teacher_onnx_dir,
    )
    logger.info(f"Saved {len(labelled)} labelled rows to {args.output_dir}")
    leave_process_group()  # every process waits for the writer, then leaves the group cleanly
    return labelled


if __name__ == "__main__":
    main()
