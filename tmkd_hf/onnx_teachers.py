"""Teachers run by onnxruntime for labelling (`label_with_teachers(..., backend="onnx" | "onnx-int8" |
"onnx-int8-ffn-fp32")`).

Why: labelling a large pool is the teachers' forward passes and nothing else, and on a CPU onnxruntime runs them
faster than PyTorch, int8 weights faster still (`benchmarks/bench_labelling.py --backends`). Each teacher is exported
once with `tmkd_hf.export.export_onnx` (the same exporter, parity check and int8 choice as the students') into a
folder named by what the teacher is (its weights' hash, or Hub id and revision), so a later run with the same
teacher, on this machine or another that has the folder, reuses the export instead of making it again. What the
export measured (its logits' largest difference to PyTorch on the check batch, the int8 weight type chosen) goes
into the soft-label cache's manifest beside the backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-int8-ffn-fp32")
# the int8 backends, and the matrix multiplications each leaves in fp32 (`export_onnx(keep_fp32=...)`): plain int8
# cost trained MiniLM teachers 0.6-1.1 points of QNLI test accuracy, int8 with the feed-forward output layers in fp32
# 0.0-0.4 (benchmarks/RESULTS.md, 2026-12-07)
INT8_BACKENDS = {"onnx-int8": (), "onnx-int8-ffn-fp32": ("ffn_output",)}
ONNX_TEACHERS_DIR = "onnx_teachers"  # the default export cache, beside the labelling output
_TEACHER_FILE = "tmkd_teacher.json"  # in each export folder: the teacher record it was made from


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, not {backend!r}.")
    if backend != "torch":
        from .export import check_onnx_installed

        check_onnx_installed(f'label_with_teachers(backend="{backend}")')


def teacher_key(record: dict) -> str:
    """What makes two teachers the same, wherever their files lie: weights hashes, else Hub id and revision."""
    if record.get("weights_sha256") or record.get("adapter_sha256"):
        parts = [record.get("weights_sha256") or record["name_or_path"], record.get("adapter_sha256", "")]
    else:
        parts = [record["name_or_path"], record.get("revision") or "", record.get("adapter") or ""]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def export_dir(onnx_dir: str | os.PathLike, record: dict, keep_fp32: tuple[str, ...] = ()) -> Path:
    stem = os.path.basename(str(record["name_or_path"]).rstrip("/")) or "teacher"
    kept = "".join(f"-{name.replace('_', '')}-fp32" for name in keep_fp32)  # another int8 file: another folder
    return Path(onnx_dir) / f"{stem}-{teacher_key(record)}{kept}"


class OnnxTeacher:
    """An exported teacher: called on a padded batch of token ids, returns its logits `[batch, num_labels]`."""

    def __init__(self, folder: Path, int8: bool, info: dict):
        from .export import OnnxClassifier

        self.folder = folder
        self.int8 = int8
        self.info = info
        self.config = AutoConfig.from_pretrained(str(folder))  # the labels, as the teacher had them
        self.classifier = OnnxClassifier(folder, int8=int8, threads=torch.get_num_threads())

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.classifier(**batch)

    def summary(self) -> dict:
        """What the manifest records of this export."""
        check = self.info["check"]["max_abs_logit_diff_vs_torch"]
        kind = "int8" if self.int8 else "fp32"
        return {
            "export": self.folder.name,
            "file": self.info["files"][kind],
            "exporter": self.info["exporter"],
            "max_abs_logit_diff_vs_torch": check[kind],
            "quantization": self.info.get("quantization") if self.int8 else None,
        }


def _read_export(folder: Path, key: str, int8: bool, keep_fp32: tuple[str, ...] = ()) -> dict | None:
    """The export info of `folder` when it holds a finished export of the teacher `key` (with the int8 file, made
    with `keep_fp32`, if needed)."""
    from .export import EXPORT_INFO_FILE

    try:
        teacher = json.loads((folder / _TEACHER_FILE).read_text())
        info = json.loads((folder / EXPORT_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    if teacher.get("key") != key or ("int8" in info["files"]) < int8:
        return None
    if not all((folder / name).is_file() for name in info["files"].values()):
        return None
    kept = ((info.get("quantization") or {}).get("kept_fp32") or {}).get("requested") or []
    if int8 and list(kept) != list(keep_fp32):
        return None
    return info


def load_onnx_teacher(
    spec, model, tokenizer, record: dict, onnx_dir: str | os.PathLike, int8: bool, keep_fp32: tuple[str, ...] = ()
) -> OnnxTeacher:
    """The teacher `record` as an `OnnxTeacher`, exported into `onnx_dir` unless a finished export is there.

    A local checkpoint is exported from its folder; an adapter (merged on its base) or an in-memory model is saved
    to a temporary folder first. The export is made in a temporary folder and renamed into place, so a killed run
    leaves no folder that looks finished.
    """
    from .export import export_onnx
    from .teachers import load_teacher

    keep_fp32 = tuple(keep_fp32) if int8 else ()
    folder = export_dir(onnx_dir, record, keep_fp32)
    key = teacher_key(record)
    info = _read_export(folder, key, int8, keep_fp32)
    if info is not None:
        logger.info(f"Reusing the ONNX export of {record['name_or_path']} in {folder}.")
        return OnnxTeacher(folder, int8, info)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        plain_dir = spec is not None and not spec.adapter and os.path.isdir(spec.name_or_path) and not spec.revision
        if plain_dir:
            source = spec.name_or_path
        else:  # a Hub id, an adapter or an in-memory model: export what loads for labelling
            teacher = model if model is not None else load_teacher(spec)
            source = str(staging / "source")
            teacher.save_pretrained(source)
            tokenizer.save_pretrained(source)
        logger.info(f"Exporting teacher {record['name_or_path']} to ONNX{' (and int8)' if int8 else ''} in {folder}.")
        info = export_onnx(source, staging / "export", quantize=int8, keep_fp32=keep_fp32)
        (staging / "export" / _TEACHER_FILE).write_text(json.dumps({"key": key, "teacher": record}, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging / "export", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OnnxTeacher(folder, int8, info)
