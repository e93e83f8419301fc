"""`label_with_teachers`: run every teacher once over a dataset and keep its logits as a column.

Soft labels are computed once, not every training step, so distillation then costs about what fine-tuning
the student costs. Each teacher reads the text with its own tokenizer; rows are sorted by length so every batch
is padded only to its own longest row, and the original order is restored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from datasets import Array2D, Dataset
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging

from .collator import TEACHER_LOGITS, check_finite_teacher_logits
from .teachers import has_named_labels, label_names, label_permutation, load_teacher, teacher_forward

logger = logging.get_logger(__name__)

MANIFEST_NAME = "tmkd_manifest.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def source_fingerprint(dataset: Dataset, text_columns: Sequence[str]) -> str:
    """SHA-256 over the text columns, row by row: identifies the rows a cache was built from."""
    digest = hashlib.sha256()
    for batch in dataset.select_columns(list(text_columns)).iter(batch_size=1024):
        for values in zip(*(batch[c] for c in text_columns)):
            digest.update(json.dumps(values, ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _tokenize(tokenizer, dataset: Dataset, text_columns: Sequence[str], max_length: int) -> list[dict]:
    texts = [list(dataset[c]) for c in text_columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(dataset))]


@torch.inference_mode()
def _run_teacher(teacher: nn.Module, tokenizer, features: list[dict], batch_size: int, dtype: torch.dtype, device):
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    logits = None
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    )
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad([features[i] for i in idx], return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            out = teacher_forward(teacher, batch).float().cpu().numpy()
        if logits is None:
            logits = np.empty((len(features), out.shape[-1]), dtype=np.float32)
        logits[idx] = out
    return logits


def label_with_teachers(
    dataset: Dataset,
    teachers: Sequence[str | os.PathLike | nn.Module | tuple[nn.Module, PreTrainedTokenizerBase]],
    text_columns: Sequence[str] = ("question", "sentence"),
    batch_size: int = 64,
    max_length: int = 128,
    dtype: str = "float32",
    output_dir: str | os.PathLike | None = None,
    label_names_order: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> Dataset:
    """Return `dataset` with a `teacher_logits` column of shape `[num_teachers, num_labels]` per row.

    Args:
        dataset: a `datasets.Dataset` holding the `text_columns`.
        teachers: checkpoint paths / Hub ids / PEFT adapter dirs, or `(model, tokenizer)` pairs.
        text_columns: one column (single sentences) or two (sentence pairs, e.g. question and passage).
        batch_size, max_length: teacher batch size and truncation length.
        dtype: `"float32"`, or `"bfloat16"`/`"float16"` autocast for the teachers (logits are stored in float32).
        output_dir: if given, the labelled dataset is saved there (`save_to_disk`) with its manifest.
        label_names_order: the label order of the column (default: the first teacher with named labels).
        device: where teachers run (default: CUDA if available, else CPU).
    """
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    missing = [c for c in text_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"text_columns {missing} are not in the dataset (columns: {dataset.column_names}). "
            "Pass text_columns=(<first text column>, <second text column>)."
        )
    if not teachers:
        raise ValueError("label_with_teachers needs at least one teacher.")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    loaded = []
    for i, spec in enumerate(teachers):
        if isinstance(spec, tuple):
            model, tokenizer = spec
            name = getattr(model, "name_or_path", None) or f"teachers[{i}]"
        else:
            model, tokenizer, name = load_teacher(spec), AutoTokenizer.from_pretrained(str(spec)), str(spec)
        loaded.append((name, model.eval(), tokenizer))

    reference = list(label_names_order) if label_names_order else None
    reference_from = "label_names_order"
    if reference is None:
        named = [(n, m) for n, m, _ in loaded if has_named_labels(m.config)]
        if named:
            reference, reference_from = label_names(named[0][1].config), f"teacher {named[0][0]!r}"
    num_labels = {m.config.num_labels for _, m, _ in loaded}
    if len(num_labels) > 1:
        desc = ", ".join(f"{n!r}: {m.config.num_labels}" for n, m, _ in loaded)
        raise ValueError(f"Teachers predict different numbers of labels ({desc}); they must share one label set.")

    encoded_by_tokenizer: dict[str, list[dict]] = {}
    columns = []
    for name, model, tokenizer in loaded:
        perm = label_permutation(model.config, reference, name, reference_from)
        key = f"{type(tokenizer).__name__}:{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}"
        if key not in encoded_by_tokenizer:
            encoded_by_tokenizer[key] = _tokenize(tokenizer, dataset, text_columns, max_length)
        model.to(device)
        logits = _run_teacher(model, tokenizer, encoded_by_tokenizer[key], batch_size, _DTYPES[dtype], device)
        columns.append(logits[:, perm] if perm is not None else logits)
    stacked = np.stack(columns, axis=1)  # [rows, teachers, labels]
    check_finite_teacher_logits(torch.from_numpy(stacked))

    feature = Array2D(shape=stacked.shape[1:], dtype="float32")
    if TEACHER_LOGITS in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS)
    labelled = dataset.add_column(TEACHER_LOGITS, stacked.tolist(), feature=feature)
    if output_dir is not None:
        from . import __version__

        manifest = {
            "teachers": [name for name, _, _ in loaded],
            "label_names": reference or [f"LABEL_{i}" for i in range(stacked.shape[-1])],
            "text_columns": list(text_columns),
            "max_length": max_length,
            "dtype": dtype,
            "num_rows": len(dataset),
            "source_fingerprint": source_fingerprint(dataset, text_columns),
            "tmkd_hf_version": __version__,
        }
        labelled.save_to_disk(str(output_dir))
        with open(os.path.join(str(output_dir), MANIFEST_NAME), "w") as f:
            json.dump(manifest, f, indent=2)
    return labelled
