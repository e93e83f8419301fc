"""`label_with_teachers`: run every teacher once over a dataset and keep its logits as a `teacher_logits` column.

Soft labels are computed once, not every training step, so distillation then costs about what fine-tuning the
student costs. How the pass is made fast and safe:

- each distinct tokenizer tokenizes the text once (teachers sharing a tokenizer share the encoding);
- rows are processed in shards; inside a shard they are sorted by length, so every batch is padded only to its own
  longest row, and written back in the original order;
- one teacher is in memory at a time; PEFT adapters on the same base share one loaded base model;
- each finished (teacher, shard) is written atomically to `output_dir` (temporary file, then rename): a killed run
  resumes from its completed shards and gives the same result as an uninterrupted one, and memory stays flat as
  the corpus grows;
- under `accelerate launch --num_processes K` the shards are split across processes; the assembled column is in
  the original row order;
- a manifest (teachers and their weights' hashes, label order, text columns, max_length, dtype, row count, a
  fingerprint of the source rows) is saved with the output and carried in `dataset.info`, so a cache built from
  other rows or other teachers is refused. The format and its checks: `tmkd_hf.soft_label_cache`.

The heap is trimmed after every batch so memory stays flat as the corpus grows (`tmkd_hf._allocator`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, concatenate_datasets, load_from_disk
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedTokenizerBase
from transformers.utils import logging

from ._allocator import trim_heap as _trim_heap
from ._allocator import use_fixed_mmap_threshold
from .collator import TEACHER_LOGITS
from .onnx_teachers import INT8_BACKENDS, ONNX_TEACHERS_DIR, OnnxTeacher, check_backend, load_onnx_teacher, teacher_key
from .pool import file_sha256, join_schemas, read_data_file, resolve_data_files
from .soft_label_cache import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    CacheBusyError,
    DamagedCacheError,
    atomic_write_text,
    attach_manifest,
    cache_lock,
    load_cache,
    load_teacher_logits,
    read_manifest,
    save_cache,
    source_fingerprint,
    verify_rows,
)
from .teachers import (
    TeacherSpec,
    has_named_labels,
    iter_loaded_teachers,
    label_names,
    label_permutation,
    load_tokenizer,
    teacher_forward,
)

# The cache format (`tmkd_hf.soft_label_cache`) and the memory controls (`tmkd_hf._allocator`) were defined here
# before; their names stay importable from this module.
__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "WORK_DIR",
    "CacheBusyError",
    "DamagedCacheError",
    "label_with_teachers",
    "load_teacher_logits",
    "read_manifest",
    "source_fingerprint",
    "use_fixed_mmap_threshold",
    "verify_rows",
]

logger = logging.get_logger(__name__)

WORK_DIR = "_tmkd_work"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TeacherLike = str | os.PathLike | dict | TeacherSpec | tuple[nn.Module, PreTrainedTokenizerBase]


# ----- the labelling pass -----


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Write `path` through a temporary file and a rename; on failure (a full disk) leave nothing half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                err.errno,
                f"No space left to write {path}: the teacher logits finished before it are kept in "
                f"{path.parent.parent}; free some space and run the same command again, it resumes from them",
            ) from err
        raise


def _tokenizer_key(tokenizer) -> str:
    """Same key = same encoding: class, vocabulary and special tokens."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{type(tokenizer).__name__}\n{vocab}\n{special}".encode()).hexdigest()
    return digest[:16]


def _tokenize(tokenizer, dataset: Dataset, text_columns, max_length: int, cache_file: str | None) -> Dataset:
    def encode(batch):
        out = tokenizer(*[batch[c] for c in text_columns], truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in out]
        return {**{k: out[k] for k in keys}, "length": [len(ids) for ids in out["input_ids"]]}

    return dataset.select_columns(list(text_columns)).map(
        encode,
        batched=True,
        batch_size=2048,
        remove_columns=list(text_columns),
        cache_file_name=cache_file,
        new_fingerprint=None if cache_file is None else Path(cache_file).stem,
        desc="Tokenizing for the teachers",
    )


def _pad(rows: dict[str, list], order: np.ndarray, tokenizer) -> dict[str, torch.Tensor]:
    """Right- or left-pad the rows `order` of a shard to their own longest row (faster than `tokenizer.pad`)."""
    lengths = [len(rows["input_ids"][i]) for i in order]
    width = max(lengths)
    pad_values = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batch = {}
    for key, pad in pad_values.items():
        if key not in rows:
            continue
        out = torch.full((len(order), width), pad, dtype=torch.long)
        for j, (i, n) in enumerate(zip(order, lengths)):
            values = torch.as_tensor(rows[key][i], dtype=torch.long)
            if left:
                out[j, width - n :] = values
            else:
                out[j, :n] = values
        batch[key] = out
    return batch


# Whether each shard's rows are sorted by length before batching (each batch padded only to its own longest row). An
# internal switch, for benchmarks/bench_labelling.py to measure what the sort gives.
_SORT_BY_LENGTH = True

# When to hand the heap's free pages back to the OS: "batch" (the default) or "shard". An internal switch, for
# benchmarks/bench_labelling.py to measure both.
_TRIM_EVERY = "batch"


@torch.inference_mode()
def _label_shard(model, tokenizer, rows: dict[str, list], batch_size: int, dtype, device, progress) -> np.ndarray:
    lengths = np.asarray(rows["length"])
    order = np.argsort(-lengths, kind="stable") if _SORT_BY_LENGTH else np.arange(len(lengths))
    out = None
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = None
        if isinstance(model, OnnxTeacher):
            logits = model(_pad(rows, idx, tokenizer))
        else:
            batch = {k: v.to(device) for k, v in _pad(rows, idx, tokenizer).items()}
            with autocast:
                logits = teacher_forward(model, batch).float().cpu().numpy()
        if out is None:
            out = np.empty((len(order), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
        progress.update(len(idx))
        if _TRIM_EVERY == "batch":
            del batch
            _trim_heap()
    if _TRIM_EVERY == "shard":
        _trim_heap()
    return out


def _resolve(teachers: Sequence[TeacherLike]) -> list[tuple[TeacherSpec | None, nn.Module | None, object]]:
    resolved = []
    for i, teacher in enumerate(teachers):
        if isinstance(teacher, tuple):
            model, tokenizer = teacher
            resolved.append((None, model.eval(), tokenizer))
        elif isinstance(teacher, nn.Module):
            raise ValueError(
                f"teachers[{i}] is a loaded model without its tokenizer: pass (model, tokenizer), a checkpoint path or "
                "a Hub id, so each teacher reads the text with its own tokenizer."
            )
        else:
            spec = TeacherSpec.parse(teacher)
            try:
                spec.check_location()  # every teacher, before any tokenizer or model is loaded
            except FileNotFoundError as err:
                raise FileNotFoundError(f"teachers[{i}]: {err}") from None
            resolved.append((spec, None, None))
    return [(spec, model, tokenizer if spec is None else load_tokenizer(spec)) for spec, model, tokenizer in resolved]


def _check_text_values(dataset: Dataset, text_columns: Sequence[str]) -> None:
    """Every text cell is a string: a None (a missing passage) would stop the tokenizer with "TextInputSequence
    must be str", naming neither the column nor the row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:] if dataset._indices is not None else dataset.data
    for column in text_columns:
        values = table.column(column)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            if not pa.types.is_null(values.type):
                raise ValueError(f"Text column {column!r} holds {values.type} values, not text.")
        if values.null_count:
            rows = np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False)).tolist()
            raise ValueError(
                f"Text column {column!r} has {len(rows)} missing value(s) (None) at rows {rows[:10]}"
                f"{' ...' if len(rows) > 10 else ''}: drop or fill those rows before labelling."
            )


_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text")


def _position_limit(config) -> int | None:
    """How many tokens a model can read: `max_position_embeddings`, less RoBERTa-style models' padding offset.
    None for no limit: no such field, or a value below 1 (XLNet's -1: relative positions, any length)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit < 1:
        return None
    if getattr(config, "model_type", None) in _POSITION_OFFSET_MODELS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def _check_max_length(resolved, max_length: int) -> None:
    """Refuse a `max_length` longer than a teacher reads (today a tensor size mismatch deep in its embeddings)."""
    for i, (spec, model, _) in enumerate(resolved):
        if model is not None:
            config = model.config
        else:
            try:
                config = AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision)
            except Exception:  # noqa: BLE001 - loading the teacher reports its own problem
                continue
        limit = _position_limit(config)
        if limit is not None and max_length > limit:
            name = spec.name if spec is not None else f"teachers[{i}]"
            raise ValueError(
                f"max_length={max_length} is longer than teacher {i} ({name!r}) reads: {limit} tokens "
                f"(its max_position_embeddings). Pass max_length <= {limit} (--max_seq_length in the recipes)."
            )


def _teacher_record(spec: TeacherSpec | None, model: nn.Module | None, index: int) -> dict:
    if spec is not None:
        return spec.identity()
    name = getattr(model, "name_or_path", None) or f"teachers[{index}]"
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return {"name_or_path": name, "in_memory": True, "weights_sha256": digest.hexdigest()}


def label_with_teachers(
    dataset: Dataset | str | os.PathLike | Sequence[str | os.PathLike],
    teachers: Sequence[TeacherLike],
    text_columns: Sequence[str] = ("question", "sentence"),
    batch_size: int = 64,
    max_length: int = 128,
    dtype: str = "float32",
    output_dir: str | os.PathLike | None = None,
    shard_size: int = 4096,
    label_names_order: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    backend: str = "torch",
    onnx_dir: str | os.PathLike | None = None,
    lock_timeout: float | None = None,
) -> Dataset:
    """Return `dataset` with a `teacher_logits` column of shape `[num_teachers, num_labels]` per row.

    Args:
        dataset: a `datasets.Dataset` holding the `text_columns`; or a pool given as files: a path, a glob or a list
            of them (`"pool/*.tsv.gz"`; `.tsv/.csv/.jsonl/.json/.parquet`, compressed or not, local or any fsspec
            URL such as `hf://datasets/...`), labelled one file at a time (`tmkd_hf.pool`): each file's soft labels
            are kept apart in `output_dir/files/`, keyed by the file's sha256, so a rerun reuses every file that is
            unchanged and relabels one that changed.
        teachers: checkpoint dirs, Hub ids (`"org/model@revision"`), PEFT adapter dirs, `TeacherSpec`s / dicts
            (`{"name_or_path": ..., "revision": ..., "adapter": ...}`), or `(model, tokenizer)` pairs.
        text_columns: one column (single sentences) or two (sentence pairs, e.g. question and passage).
        batch_size, max_length: teacher batch size and truncation length.
        dtype: `"float32"`, or `"bfloat16"` / `"float16"` autocast for the teachers (logits are stored in float32).
        output_dir: save the labelled dataset here (`save_to_disk`) with its manifest, streaming finished shards
            to disk as it goes; a rerun after a crash resumes from them, a rerun after success loads the result.
            Required when labelling with several processes.
        shard_size: rows per shard (the unit of resumption and of the work split between processes).
        label_names_order: the label order of the column (default: the first teacher whose labels are named).
        device: where the teachers run (default: this process's accelerator device, else CPU).
        overwrite: replace a finished cache in `output_dir` that was built from other rows or teachers.
        show_progress: show a progress bar with rows/s per teacher.
        backend: `"torch"`, or `"onnx"` / `"onnx-int8"` / `"onnx-int8-ffn-fp32"`: each teacher exported once to
            ONNX (fp32; int8 weights; int8 with the feed-forward output layers kept in fp32, the closer to fp32)
            and run by onnxruntime (`tmkd_hf.onnx_teachers`); needs `pip install "tmkd_hf[onnx]"`.
        onnx_dir: where the ONNX exports of the teachers are kept and found again (default:
            `output_dir/onnx_teachers`).
        lock_timeout: how long to wait for another labelling job that holds `output_dir` (default: as long as it
            takes); then `CacheBusyError`.
    """
    from accelerate import PartialState

    # without CUDA, `cpu=True` is what lets `accelerate launch` / torchrun processes join a gloo group
    state = PartialState(cpu=not torch.cuda.is_available())
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    text_columns = list(text_columns)
    if not teachers:
        raise ValueError("label_with_teachers needs at least one teacher.")
    files = None
    if isinstance(dataset, Dataset):
        missing = [c for c in text_columns if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"text_columns {missing} are not in the dataset (columns: {dataset.column_names}). "
                "Pass text_columns=(<first text column>, <second text column>)."
            )
        if len(dataset) == 0:
            raise ValueError("The dataset is empty: there is nothing for the teachers to label.")
        _check_text_values(dataset, text_columns)
    elif isinstance(dataset, (str, os.PathLike)) or (
        isinstance(dataset, Sequence) and dataset and all(isinstance(d, (str, os.PathLike)) for d in dataset)
    ):
        files = resolve_data_files(dataset)
    else:
        raise TypeError(
            f"dataset must be a datasets.Dataset (one split of a DatasetDict) or data files (a path, a glob or a list "
            f"of them), not {type(dataset).__name__}."
        )
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
    check_backend(backend)
    if backend != "torch" and dtype != "float32":
        raise ValueError(f"dtype={dtype!r} is for the torch backend; {backend!r} runs the exported graph as it is.")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1.")
    if state.num_processes > 1 and output_dir is None:
        raise ValueError("Labelling with several processes needs output_dir= (the processes share it).")
    device = torch.device(device) if device is not None else state.device

    resolved = _resolve(teachers)
    _check_max_length(resolved, max_length)
    common = {
        "format": MANIFEST_FORMAT,
        "teachers": [_teacher_record(spec, model, i) for i, (spec, model, _) in enumerate(resolved)],
        "text_columns": text_columns,
        "max_length": max_length,
        "dtype": dtype,
        "backend": backend,
        "label_names_order": list(label_names_order) if label_names_order else None,
    }
    holder = tempfile.TemporaryDirectory(prefix="tmkd-labels-") if output_dir is None else None
    out = Path(output_dir) if output_dir is not None else Path(holder.name)
    settings = dict(
        resolved=resolved, batch_size=batch_size, dtype=_DTYPES[dtype], device=device, shard_size=shard_size,
        state=state, show_progress=show_progress, label_names_order=label_names_order, overwrite=overwrite,
        onnx_dir=Path(onnx_dir) if onnx_dir is not None else out / ONNX_TEACHERS_DIR,
    )  # fmt: skip
    locked = state.is_main_process and output_dir is not None
    try:
        with cache_lock(out, lock_timeout) if locked else nullcontext():
            if files is None:
                return _label_dataset(dataset, common, out if output_dir is not None else None, **settings)
            return _label_files(files, common, out, in_memory=output_dir is None, **settings)
    finally:
        if holder is not None:
            holder.cleanup()


_PLAN_FIELDS = ("format", "text_columns", "max_length", "dtype", "label_names_order", "num_rows", "source_fingerprint")


def _plan_key(plan: dict) -> dict:
    """What must match for logits to be reused: the plan without where things lie (a cache directory copied to
    another machine, with the teachers in other folders, is still the same cache)."""
    key = {k: plan.get(k) for k in _PLAN_FIELDS}
    key["backend"] = plan.get("backend", "torch")  # caches from before the ONNX backends are torch's
    key["teachers"] = [teacher_key(t) for t in plan["teachers"]]
    return key


def _why_not_reusable(previous: dict, plan: dict) -> str | None:
    """Why a cache built from `previous` cannot serve `plan` (None when it can), said so a person can act on it."""
    old, new = _plan_key(previous), _plan_key(plan)
    if old == new:
        return None
    reasons = []
    if old["teachers"] != new["teachers"]:
        was = [t["name_or_path"] for t in previous["teachers"]]
        now = [t["name_or_path"] for t in plan["teachers"]]
        if len(was) == len(now):
            changed = [i for i, (a, b) in enumerate(zip(old["teachers"], new["teachers"])) if a != b]
            reasons.append(f"the weights of teacher(s) {changed} differ from those it was labelled with")
        else:
            reasons.append(f"it was labelled by {len(was)} teachers {was}, this run has {len(now)} {now}")
    for name in ("backend", "dtype", "max_length", "text_columns", "label_names_order", "num_rows"):
        if old.get(name) != new.get(name):
            reasons.append(f"{name} was {old.get(name)!r}, now {new.get(name)!r}")
    if old.get("source_fingerprint") != new.get("source_fingerprint") and old.get("num_rows") == new.get("num_rows"):
        reasons.append("its rows' text differs")
    return "; ".join(reasons) or "its manifest differs"


def _retrained_only(previous: dict, plan: dict) -> bool:
    """The same teachers (by name), rows and settings, only their weights or the backend changed: a relabel is what
    the user wants (teachers retrained on a fresh machine), not an error."""
    old, new = _plan_key(previous), _plan_key(plan)
    same_names = [t["name_or_path"] for t in previous["teachers"]] == [t["name_or_path"] for t in plan["teachers"]]
    rest = ("teachers", "backend")
    return same_names and {k: v for k, v in old.items() if k not in rest} == {
        k: v for k, v in new.items() if k not in rest
    }


def _previous_manifest(out: Path, then: str) -> dict | None:
    """The manifest of a finished cache in `out`, or None (a damaged one is named in a warning: `then` is done)."""
    try:
        return read_manifest(out)
    except DamagedCacheError as err:
        logger.warning(f"{then}: {err}")
        return None


def _refuse_or_relabel(out: Path, previous: dict, plan: dict, reason: str, overwrite: bool) -> None:
    """A cache in `out` that cannot serve `plan` (`reason`): relabelled when the user allows it or only the teachers'
    weights or the backend changed (`_retrained_only`), else refused."""
    if overwrite or _retrained_only(previous, plan):
        logger.warning(f"Relabelling {out}: {reason}.")
        return
    raise ValueError(
        f"{out} already holds teacher logits built from other rows or teachers "
        f"({previous['num_rows']} rows, teachers {[t['name_or_path'] for t in previous['teachers']]}): "
        f"{reason}. Choose another output_dir, or pass overwrite=True to replace it."
    )


def _prepare_work(work: Path, plan: dict, state) -> None:
    """The work directory of an unfinished pass over these rows with these teachers (others' work is discarded)."""
    if state.is_main_process:
        plan_file = work / "plan.json"
        if work.exists():
            try:
                same = _plan_key(json.loads(plan_file.read_text())) == _plan_key(plan)
            except (OSError, ValueError, KeyError):
                same = False
            if not same:
                logger.warning(f"Discarding unfinished labelling work in {work}: it was for other rows or teachers.")
                shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan_file, json.dumps(plan, indent=2))
    state.wait_for_everyone()


def _onnx_teachers(common: dict, resolved, onnx_dir: Path, state) -> list[OnnxTeacher] | None:
    """The teachers as ONNX graphs (exported by the main process first, found again by the others)."""
    if common["backend"] == "torch":
        return None
    int8 = common["backend"] in INT8_BACKENDS
    keep_fp32 = INT8_BACKENDS.get(common["backend"], ())
    with state.main_process_first():
        return [
            load_onnx_teacher(spec, model, tokenizer, record, onnx_dir, int8, keep_fp32)
            for (spec, model, tokenizer), record in zip(resolved, common["teachers"])
        ]


def _label_dataset(dataset: Dataset, common: dict, out: Path | None, *, overwrite, label_names_order, onnx_dir,
                   **job) -> Dataset:  # fmt: skip
    """Label the rows of one `Dataset` (row-range shards), cached in `out` when given."""
    from . import __version__

    state = job["state"]
    plan = {
        **common,
        "num_rows": len(dataset),
        "source_fingerprint": source_fingerprint(dataset, common["text_columns"]),
    }
    if out is not None:
        previous = _previous_manifest(out, "Relabelling")
        if previous is not None:
            reason = _why_not_reusable(previous, plan)
            if reason is None:
                try:
                    labelled = load_cache(out, previous)
                    logger.info(f"Teacher logits for these rows and teachers are already in {out}; loading them.")
                    return labelled
                except DamagedCacheError as err:
                    logger.warning(f"Relabelling: {err}")
            else:
                _refuse_or_relabel(out, previous, plan, reason, overwrite)
        work = out / WORK_DIR
        _prepare_work(work, plan, state)
        tmp_holder = None
    else:
        tmp_holder = tempfile.TemporaryDirectory(prefix="tmkd-labels-")
        work = Path(tmp_holder.name)

    try:
        onnx = _onnx_teachers(common, job["resolved"], onnx_dir, state)
        labelling = _LabellingJob(dataset=dataset, plan=plan, work=work, onnx=onnx, **job)
        label_info = labelling.run(label_names_order)
        state.wait_for_everyone()
        manifest = {
            **plan,
            "label_names": label_info["names"],
            "onnx_exports": [t.summary() for t in onnx] if onnx else None,
            "tmkd_hf_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        num_teachers, shard_size = len(job["resolved"]), job["shard_size"]
        if out is None:
            logits = _assemble_array(work, num_teachers, len(dataset), shard_size)
            return _with_column(dataset, logits, manifest)
        if state.is_main_process:
            _assemble_to_disk(dataset, work, num_teachers, shard_size, label_info["count"], manifest, out)
        state.wait_for_everyone()
        return load_from_disk(str(out))
    finally:
        if tmp_holder is not None:
            tmp_holder.cleanup()


FILES_DIR = "files"  # output_dir/files/<file name>-<sha256[:12]>/: one pool file's soft labels
_FILE_RECORD = "file.json"  # written last: the file's logits are finished
_FILE_LOGITS = "logits.npy"  # float32 [rows, teachers, labels], in the file's row order


def _file_dir(out: Path, path: str, sha256: str) -> Path:
    return out / FILES_DIR / f"{os.path.basename(path)}-{sha256[:12]}"


def _finished_file(folder: Path, sha256: str, common: dict) -> tuple[dict | None, str]:
    """(the record of this file labelled before with these teachers and settings, when its logits read back whole;
    else None and why it must be labelled)."""
    try:
        record = json.loads((folder / _FILE_RECORD).read_text())
    except FileNotFoundError:
        return None, "not labelled yet"
    except (OSError, ValueError) as err:
        return None, f"its record is damaged ({err})"
    reason = _why_not_reusable(record["plan"], {**record["plan"], **common})
    if record.get("sha256") != sha256 or reason is not None:
        return None, reason or "its record is for other contents"
    try:
        logits = np.load(folder / _FILE_LOGITS, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        return None, f"its logits are damaged ({err})"
    if logits.shape != (record["num_rows"], len(common["teachers"]), len(record["label_names"])):
        return None, f"its logits have shape {logits.shape}, not ({record['num_rows']}, teachers, labels)"
    return record, ""


def _label_files(files: list[str], common: dict, out: Path, *, in_memory: bool, overwrite, label_names_order,
                 onnx_dir, **job) -> Dataset:  # fmt: skip
    """Label a pool given as files, one file at a time; each file's logits are kept under `out/files/`."""
    from . import __version__

    state, text_columns = job["state"], common["text_columns"]
    shas = [file_sha256(f) for f in files]
    sources = [{"file": f, "name": os.path.basename(f), "sha256": s} for f, s in zip(files, shas)]
    previous = _previous_manifest(out, "Reassembling")
    if previous is not None:
        same_sources = [s["sha256"] for s in previous.get("source_files") or []] == shas
        plan = {**previous, **common}  # the files are compared one by one below
        reason = _why_not_reusable(previous, plan)
        if reason is None and same_sources and not in_memory:
            try:
                labelled = load_cache(out, previous)
                logger.info(f"Teacher logits for these {len(files)} files and teachers are already in {out}.")
                return labelled
            except DamagedCacheError as err:
                logger.warning(f"Reassembling: {err}")
        if reason is not None:
            _refuse_or_relabel(out, previous, plan, reason, overwrite)

    work_root = out / WORK_DIR
    if state.is_main_process:
        work_root.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    onnx = None
    records = []
    for index, (path, sha) in enumerate(zip(files, shas)):
        folder = _file_dir(out, path, sha)
        record, why = _finished_file(folder, sha, common)
        state.wait_for_everyone()
        if record is not None:
            logger.info(f"[{index + 1}/{len(files)}] {os.path.basename(path)}: reusing its teacher logits ({folder}).")
            records.append(record)
            continue
        earlier = [p for p in (out / FILES_DIR).glob(f"{os.path.basename(path)}-*") if p != folder]
        if earlier and why == "not labelled yet":
            why = "changed since it was labelled (another sha256)"
        logger.info(f"[{index + 1}/{len(files)}] {os.path.basename(path)}: labelling it ({why}).")
        start = time.perf_counter()
        arrow_file = work_root / f"rows-{sha[:16]}.arrow"
        with state.main_process_first():
            if state.is_main_process:
                rows = read_data_file(path, text_columns, arrow_file)
            else:
                rows = Dataset.from_file(str(arrow_file))
        plan = {**common, "num_rows": len(rows), "source_fingerprint": source_fingerprint(rows, text_columns)}
        work = folder / WORK_DIR
        _prepare_work(work, plan, state)
        if onnx is None:
            onnx = _onnx_teachers(common, job["resolved"], onnx_dir, state)
        label_info = _LabellingJob(dataset=rows, plan=plan, work=work, onnx=onnx, **job).run(label_names_order)
        state.wait_for_everyone()
        record = {
            "file": path,
            "sha256": sha,
            "num_rows": len(rows),
            "source_fingerprint": plan["source_fingerprint"],
            "label_names": label_info["names"],
            "seconds": round(time.perf_counter() - start, 2),
            "plan": plan,
            "onnx_exports": [t.summary() for t in onnx] if onnx else None,
        }
        if state.is_main_process:
            logits = _assemble_array(work, len(job["resolved"]), len(rows), job["shard_size"])
            _atomic_save(folder / _FILE_LOGITS, logits)
            atomic_write_text(folder / _FILE_RECORD, json.dumps(record, indent=2))
            shutil.rmtree(work, ignore_errors=True)
            for old in earlier:  # the logits of the file's earlier contents
                shutil.rmtree(old, ignore_errors=True)
        state.wait_for_everyone()
        records.append(record)

    names = records[0]["label_names"]
    for path, record in zip(files, records):
        if record["label_names"] != names:
            raise ValueError(
                f"{path} was labelled in label order {record['label_names']}, {files[0]} in {names}: relabel with "
                "label_names_order= to give every file one order."
            )
    manifest = {
        **common,
        "num_rows": sum(r["num_rows"] for r in records),
        "source_files": [{**s, "num_rows": r["num_rows"], "seconds": r["seconds"]} for s, r in zip(sources, records)],
        "label_names": names,
        "onnx_exports": next((r["onnx_exports"] for r in records if r.get("onnx_exports")), None),
        "tmkd_hf_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if state.is_main_process:
        labelled = _assemble_files(files, shas, manifest, out, work_root, in_memory)
    state.wait_for_everyone()
    if not state.is_main_process:
        labelled = load_from_disk(str(out))
    return labelled


def _assemble_files(files, shas, manifest, out: Path, work_root: Path, in_memory: bool) -> Dataset:
    """The pool's rows, file after file, with their logits: saved as the cache in `out` (or kept in memory)."""
    parts = []
    text_columns = manifest["text_columns"]
    for path, sha in zip(files, shas):
        arrow_file = work_root / f"rows-{sha[:16]}.arrow"
        rows = (
            Dataset.from_file(str(arrow_file))
            if arrow_file.is_file()
            else read_data_file(path, text_columns, arrow_file)
        )
        logits = np.load(_file_dir(out, path, sha) / _FILE_LOGITS, mmap_mode="r")
        features = Features({TEACHER_LOGITS: Array2D(shape=logits.shape[1:], dtype="float32")})
        column_file = work_root / f"logits-{sha[:16]}.arrow"
        with ArrowWriter(path=str(column_file), features=features) as writer:
            for start in range(0, len(logits), 8192):
                writer.write_batch({TEACHER_LOGITS: list(np.asarray(logits[start : start + 8192]))})
            writer.finalize()
        source = rows.remove_columns(TEACHER_LOGITS) if TEACHER_LOGITS in rows.column_names else rows
        parts.append(concatenate_datasets([source, Dataset.from_file(str(column_file))], axis=1))
    labelled = concatenate_datasets(join_schemas(parts))
    manifest["source_fingerprint"] = source_fingerprint(labelled, text_columns)
    if in_memory:
        labelled = Dataset(InMemoryTable(labelled.data.table.combine_chunks()))
        attach_manifest(labelled, manifest)
        return labelled
    save_cache(labelled, manifest, out)
    shutil.rmtree(work_root, ignore_errors=True)
    return load_from_disk(str(out))


def _shard_path(work: Path, teacher: int, shard: int) -> Path:
    return work / f"teacher-{teacher:02d}" / f"shard-{shard:06d}.npy"


@dataclass
class _LabellingJob:
    """One labelling pass of this process: which shards it owns, how to read them, where their logits go."""

    dataset: Dataset
    resolved: list[tuple[TeacherSpec | None, nn.Module | None, object]]
    plan: dict
    work: Path
    batch_size: int
    dtype: torch.dtype
    device: torch.device
    shard_size: int
    state: object
    show_progress: bool
    onnx: list[OnnxTeacher] | None = None  # the teachers as ONNX graphs (backend "onnx" / "onnx-int8")

    @property
    def num_rows(self) -> int:
        return len(self.dataset)

    @property
    def my_shards(self) -> list[int]:
        num_shards = max(1, -(-self.num_rows // self.shard_size))
        return [s for s in range(num_shards) if s % self.state.num_processes == self.state.process_index]

    def __post_init__(self):
        self.discard_damaged_shards()

    def discard_damaged_shards(self) -> None:
        """A shard left by an earlier run is reused only if it reads back whole: a zero-byte or truncated file (a
        disk that filled up, a copy cut short) is named in a warning, deleted, and computed again."""
        for teacher in range(len(self.resolved)):
            for s in self.my_shards:
                path = _shard_path(self.work, teacher, s)
                if not path.exists():
                    continue
                problem = _shard_problem(path, min(self.shard_size, self.num_rows - s * self.shard_size))
                if problem:
                    logger.warning(f"Recomputing damaged shard {path}: {problem}.")
                    path.unlink()

    def todo(self, teacher: int) -> list[int]:
        return [s for s in self.my_shards if not _shard_path(self.work, teacher, s).exists()]

    def encodings(self) -> dict[int, Dataset]:
        """One encoding per distinct tokenizer, shared by the teachers that use it (only where work is left).

        Every process passes the `main_process_first` barrier of every tokenizer, work or not: a process that owns
        no shard (fewer shards than processes, or a resumed run) must not leave the others' barriers unmatched.
        """
        needed: dict[str, list[int]] = {}
        for i, (_, _, tokenizer) in enumerate(self.resolved):
            needed.setdefault(_tokenizer_key(tokenizer), [])
            if self.todo(i):
                needed[_tokenizer_key(tokenizer)].append(i)
        out = {}
        for key, teachers in needed.items():
            with self.state.main_process_first():
                if not teachers:
                    continue
                cache_file = str(self.work / f"tokenized-{key}-{self.plan['max_length']}.arrow")
                tokenizer = self.resolved[teachers[0]][2]
                columns, max_length = self.plan["text_columns"], self.plan["max_length"]
                encoded = _tokenize(tokenizer, self.dataset, columns, max_length, cache_file)
            out.update({i: encoded for i in teachers})
        return out

    def loaded_teachers(self) -> Iterator[tuple[list[int], nn.Module]]:
        """(teacher indices, model): in-memory teachers, then checkpoints one at a time (adapters share a base); or
        the ONNX teachers, in order."""
        if self.onnx is not None:
            for i, teacher in enumerate(self.onnx):
                yield [i], teacher
            return
        specs = [spec for spec, _, _ in self.resolved]
        for i, (_, model, _) in enumerate(self.resolved):
            if model is not None:
                yield [i], model
        loadable = [i for i, spec in enumerate(specs) if spec is not None]
        if loadable:
            for indices, model in iter_loaded_teachers([specs[i] for i in loadable]):
                yield [loadable[j] for j in indices], model

    def teacher_name(self, i: int) -> str:
        record = self.plan["teachers"][i]
        return record["name_or_path"] + (f"+{record['adapter']}" if record.get("adapter") else "")

    def run(self, label_names_order: Sequence[str] | None) -> dict:
        """Label this process's unfinished shards with every teacher; return the label names and count."""
        encodings = self.encodings()
        reference = list(label_names_order) if label_names_order else None
        reference_from = "label_names_order"
        label_info = {"names": reference, "count": None}
        for indices, model in self.loaded_teachers():
            i = indices[0]
            config = model.config if not hasattr(model, "get_base_model") else model.get_base_model().config
            name = self.teacher_name(i)
            if label_info["count"] is None:
                label_info["count"] = config.num_labels
            if reference is None and has_named_labels(config):
                reference, reference_from = label_names(config), f"teacher {name!r}"
                label_info["names"] = reference
            if config.num_labels != label_info["count"]:
                raise ValueError(
                    f"Teacher {name!r} predicts {config.num_labels} labels but the teachers before it predict "
                    f"{label_info['count']}; all teachers must share one label set."
                )
            permutation = label_permutation(config, reference, name, reference_from)
            if self.todo(i):
                self.label_teacher(i, model, encodings[i], permutation)
        if label_info["names"] is None:
            label_info["names"] = [f"LABEL_{k}" for k in range(label_info["count"])]
        return label_info

    def label_teacher(self, i: int, model: nn.Module, encoded: Dataset, permutation: list | None) -> None:
        todo = self.todo(i)
        tokenizer = self.resolved[i][2]
        is_torch = isinstance(model, nn.Module)
        if is_torch:
            original_device = next(model.parameters()).device
            model.to(self.device)
        rows_todo = sum(min(self.shard_size, self.num_rows - s * self.shard_size) for s in todo)
        bar = tqdm(
            total=rows_todo,
            unit="rows",
            desc=f"teacher {i} ({self.teacher_name(i)})",
            disable=not self.show_progress,
            position=self.state.process_index,
            leave=True,
        )
        for s in todo:
            rows = encoded[s * self.shard_size : min((s + 1) * self.shard_size, self.num_rows)]
            logits = _label_shard(model, tokenizer, rows, self.batch_size, self.dtype, self.device, bar)
            if permutation is not None:
                logits = logits[:, permutation]
            self.check_finite(i, s, logits)
            path = _shard_path(self.work, i, s)
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(path, logits)
        bar.close()
        if is_torch and self.resolved[i][1] is not None:  # a model the caller passed in goes back where it was
            model.to(original_device)

    def check_finite(self, i: int, shard: int, logits: np.ndarray) -> None:
        """NaN / inf from teacher `i`: name that teacher and the dataset rows, before anything of it is saved."""
        bad = ~np.isfinite(logits).all(-1)
        if bad.any():
            rows = (np.flatnonzero(bad) + shard * self.shard_size).tolist()
            shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
            raise ValueError(
                f"Teacher {i} ({self.teacher_name(i)!r}) produced NaN or inf logits for {len(rows)} of {len(logits)} "
                f"rows of shard {shard} (dataset rows {shown}). It probably diverged or ran in too low a precision "
                f"(dtype {self.dtype!r}): relabel with it in float32, or fix or drop that teacher. Its logits for this "
                "shard were not saved; every finished shard is kept for the rerun."
            )


def _shard_problem(path: Path, rows: int) -> str | None:
    """What is wrong with a saved shard of `rows` rows, or None when it reads back whole and finite."""
    try:
        array = np.load(path)
    except (ValueError, EOFError, OSError) as err:
        return f"unreadable ({path.stat().st_size} bytes: {err})"
    if array.ndim != 2 or array.shape[0] != rows:
        return f"shape {tuple(array.shape)}, expected ({rows}, num_labels)"
    if not np.isfinite(array).all():
        return "holds NaN or inf"
    return None


def _load_shard(work: Path, num_teachers: int, shard: int) -> np.ndarray:
    return np.stack([np.load(_shard_path(work, t, shard)) for t in range(num_teachers)], axis=1)


def _assemble_array(work: Path, num_teachers: int, num_rows: int, shard_size: int) -> np.ndarray:
    num_shards = max(1, -(-num_rows // shard_size))
    return np.concatenate([_load_shard(work, num_teachers, s) for s in range(num_shards)], axis=0)


def _with_column(dataset: Dataset, logits: np.ndarray, manifest: dict) -> Dataset:
    if TEACHER_LOGITS in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS)
    feature = Array2D(shape=logits.shape[1:], dtype="float32")
    labelled = dataset.add_column(TEACHER_LOGITS, logits.tolist(), feature=feature)
    attach_manifest(labelled, manifest)
    return labelled


def _assemble_to_disk(dataset, work, num_teachers, shard_size, num_labels, manifest, out: Path) -> None:
    """Write the column shard by shard (flat memory), join it to the rows, save, then commit the manifest."""
    num_rows = len(dataset)
    num_shards = max(1, -(-num_rows // shard_size))
    features = Features({TEACHER_LOGITS: Array2D(shape=(num_teachers, num_labels), dtype="float32")})
    column_file = work / "teacher_logits.arrow"
    with ArrowWriter(path=str(column_file), features=features) as writer:
        for s in range(num_shards):
            writer.write_batch({TEACHER_LOGITS: list(_load_shard(work, num_teachers, s))})
        writer.finalize()
    column = Dataset.from_file(str(column_file))
    source = dataset.remove_columns(TEACHER_LOGITS) if TEACHER_LOGITS in dataset.column_names else dataset
    if source._indices is not None:
        source = source.flatten_indices()
    save_cache(concatenate_datasets([source, column], axis=1), manifest, out)
    shutil.rmtree(work, ignore_errors=True)
