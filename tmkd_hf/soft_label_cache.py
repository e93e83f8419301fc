"""The soft-label cache: the teachers' logits, computed once, kept with a manifest of what they were computed from.

TMKD trains on soft labels that the teachers produce once (`tmkd_hf.labelling.label_with_teachers`), not every
step. What that pass leaves, and what training reads back, is this format (`tmkd_hf/teacher-logits/v1`):

- a `datasets` Arrow dataset (`save_to_disk`): the source rows plus a `teacher_logits` column, float32
  `[num_teachers, num_labels]` per row, in the label order `label_names`;
- a manifest, `tmkd_manifest.json` beside the data files and the same JSON in `dataset.info.description` (so a
  labelled dataset in memory carries it too): the teachers and their weights' hashes or revisions, `label_names`,
  the text columns, max_length, dtype, row count and a fingerprint of the source rows. It is written last: a
  directory without it holds no finished cache.

Reading checks the cache before anything trains on it: a cache built from other rows (`verify_rows`), in another
label order than the student's (`check_label_order`), or damaged, e.g. a copy cut short (`DamagedCacheError`), is
refused with an error that names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from datasets import Dataset, load_from_disk

from .collator import TEACHER_LOGITS
from .teachers import are_default_label_names

MANIFEST_NAME = "tmkd_manifest.json"
MANIFEST_FORMAT = "tmkd_hf/teacher-logits/v1"
LOCK_NAME = ".tmkd_lock"

logger = logging.getLogger(__name__)


class DamagedCacheError(ValueError):
    """A teacher-logits cache whose manifest or data files do not read back (a copy cut short, a full disk)."""


# ----- the manifest -----


def source_fingerprint(dataset: Dataset, text_columns: Sequence[str]) -> str:
    """SHA-256 over the text columns, row by row and in order: identifies the rows a cache was built from."""
    digest = hashlib.sha256()
    for batch in dataset.select_columns(list(text_columns)).iter(batch_size=4096):
        for values in zip(*(batch[c] for c in text_columns)):
            digest.update(json.dumps(values, ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def attach_manifest(dataset: Dataset, manifest: dict) -> None:
    """Carry `manifest` in `dataset.info` (where `read_manifest` finds it, and `save_to_disk` keeps it)."""
    dataset.info.description = json.dumps(manifest)


def read_manifest(dataset_or_dir: Dataset | str | os.PathLike) -> dict | None:
    """The teacher-logits manifest of a labelled dataset (carried in `dataset.info`) or of a cache directory."""
    if isinstance(dataset_or_dir, Dataset):
        text = dataset_or_dir.info.description or ""
        try:
            manifest = json.loads(text)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None
    path = Path(dataset_or_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedCacheError(
            f"{path} is damaged ({path.stat().st_size} bytes, not valid JSON: {err}). Rebuild the cache: "
            "label_with_teachers(..., output_dir=...) relabels it (overwrite=True is not needed for a damaged one)."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DamagedCacheError(f"{path} is not a tmkd_hf teacher-logits manifest (no format {MANIFEST_FORMAT!r}).")
    return manifest


# ----- checks: the rows and the label order the logits belong to -----


def verify_rows(dataset: Dataset, manifest: dict, what: str = "this dataset") -> None:
    """Refuse teacher logits computed on other rows than `dataset`'s (same text columns, same order)."""
    columns = manifest["text_columns"]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{what} lacks the text columns {missing} the teacher logits were computed from.")
    if len(dataset) != manifest["num_rows"] or source_fingerprint(dataset, columns) != manifest["source_fingerprint"]:
        raise ValueError(
            f"The teacher logits were computed on other rows than {what}: the cache has {manifest['num_rows']} rows "
            f"with fingerprint {manifest['source_fingerprint'][:12]}…, {what} has {len(dataset)} rows with "
            f"fingerprint {source_fingerprint(dataset, columns)[:12]}…. The logits would be misaligned with the "
            "text: relabel this data with tmkd_hf.label_with_teachers (or point to the cache built from it)."
        )


def same_label_order(cached: Sequence[str] | None, names: Sequence[str] | None) -> bool:
    """Whether teacher logits in the label order `cached` (a manifest's `label_names`) line up with `names` (a
    student's id2label, or a run's labels).

    The one rule, for the trainer and the recipes: nothing to compare when either side is missing or is
    transformers' default `LABEL_0`, `LABEL_1`, ... (labels known by position only, as `label_permutation` treats
    them when labelling); named labels must be the same, in the same order, ignoring case.
    """
    if not cached or not names or are_default_label_names(cached) or are_default_label_names(names):
        return True
    return [str(n).lower() for n in cached] == [str(n).lower() for n in names]


def check_label_order(
    cached: Sequence[str] | None, names: Sequence[str] | None, names_are: str, cache: str = "The teacher logits"
) -> None:
    """Refuse teacher logits whose label order is not `names`' (`same_label_order`): the logits of one label would
    teach another. `names_are` says whose labels `names` are ("the student's id2label is"), `cache` where the
    logits come from."""
    if same_label_order(cached, names):
        return
    cached, names = list(cached), list(names)
    raise ValueError(
        f"{cache} are in label order {cached} but {names_are} {names}. Relabel with label_names_order={names}, or "
        f"build the student with id2label={dict(enumerate(cached))} (the cache's label order)."
    )


# ----- reading and writing a cache directory -----


def load_cache(cache_dir: Path, manifest: dict) -> Dataset:
    """The saved labelled dataset, checked against its manifest; a damaged data file is named, never half-read."""
    try:
        labelled = load_from_disk(str(cache_dir))
        if len(labelled) != manifest["num_rows"] or TEACHER_LOGITS not in labelled.column_names:
            raise ValueError(
                f"{len(labelled)} rows with columns {labelled.column_names}, the manifest says "
                f"{manifest['num_rows']} rows with {TEACHER_LOGITS!r}"
            )
        labelled.with_format("numpy")[len(labelled) - 1]  # the last row reads back: the data file is whole
    except Exception as err:  # noqa: BLE001 - datasets / pyarrow raise many kinds; all mean "damaged"
        files = sorted(p.name for p in cache_dir.glob("data-*.arrow"))
        raise DamagedCacheError(
            f"The teacher-logits cache in {cache_dir} is damaged (data files {files}): {type(err).__name__}: "
            f"{err}. Rebuild it: label_with_teachers(..., output_dir={str(cache_dir)!r}) relabels a damaged cache."
        ) from None
    return labelled


def load_teacher_logits(cache_dir: str | os.PathLike, dataset: Dataset | None = None) -> Dataset:
    """Load a labelled dataset saved by `label_with_teachers(..., output_dir=cache_dir)`.

    With `dataset`, first check that the cache was built from exactly its rows (clear error otherwise).
    """
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise ValueError(
            f"{cache_dir} holds no finished teacher-logits cache ({MANIFEST_NAME} is missing): run "
            "tmkd_hf.label_with_teachers(..., output_dir=...) (an interrupted run resumes where it stopped)."
        )
    labelled = load_cache(Path(cache_dir), manifest)
    if dataset is not None:
        verify_rows(dataset, manifest, "the given dataset")
    return labelled


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename: a reader sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_cache(labelled: Dataset, manifest: dict, out: Path) -> None:
    """Save `labelled` (rows + `teacher_logits`) as the cache in `out`, its manifest committed last.

    The dataset is saved beside `out` first; then the manifest (the "finished" mark) goes first and comes back last,
    and only the files of an earlier `save_to_disk` are replaced: anything else the user keeps in `out` stays.
    """
    attach_manifest(labelled, manifest)
    staging = out.parent / f".{out.name}.saving"
    if staging.exists():
        shutil.rmtree(staging)
    labelled.save_to_disk(str(staging))
    atomic_write_text(staging / MANIFEST_NAME, json.dumps(manifest, indent=2))
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in out.iterdir():
        if entry.is_file() and (entry.name in ("dataset_info.json", "state.json") or entry.name.startswith("data-")):
            entry.unlink()
    for entry in staging.iterdir():
        if entry.name != MANIFEST_NAME:
            os.replace(entry, out / entry.name)
    os.replace(staging / MANIFEST_NAME, out / MANIFEST_NAME)
    staging.rmdir()


class CacheBusyError(RuntimeError):
    """Another process is labelling into the same cache directory."""


@contextlib.contextmanager
def cache_lock(directory: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Hold `directory`'s labelling lock: a second labelling job pointed at the same cache waits for the first
    (`timeout` seconds at most, then `CacheBusyError`; None waits as long as it takes), so the two never write the
    same shards. An OS lock (`flock`) on `directory/.tmkd_lock`: released by the kernel when its holder dies, so a
    killed run never leaves a stale lock. Where `fcntl` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    with open(path, "a+") as f:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise CacheBusyError(
                        f"{directory} is being labelled by {holder}; waited {timeout:.0f} s. Wait for it to finish "
                        "(the same command then loads its result), or give this job another output directory."
                    ) from None
                if not told:
                    logger.warning(f"{directory} is being labelled by {holder}: waiting for it to finish.")
                    told = True
                time.sleep(0.2)
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
