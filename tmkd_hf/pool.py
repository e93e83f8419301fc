"""A stage-1 pool given as files: several files or globs, compressed or not, read one file at a time.

Why its own reader: an unlabelled pool is large and arrives in shards (`pool-00-of-10.tsv.gz`, ...). Labelling it
must keep memory flat as it grows, resume per file after a crash, notice a file that changed, and stop on bad input
with an error that names the file and the line, before anything of that file is labelled. So each file is streamed,
row by row, into an Arrow file on disk (memory-mapped afterwards), and checked as it is read:

- `.tsv` is read as GLUE ships it: tab separated, **no quoting** (its sentences contain quote characters); `.csv`
  with standard quoting. The text columns stay text; another column whose every cell is an integer (or a number)
  becomes int64 (float64), as `datasets`' csv reader would give it; files of a pool that disagree on a column's type
  are given it as text when they are joined (`join_schemas`).
- `.jsonl` (and `.json`: JSON Lines, or one JSON array), `.parquet`.
- Any of them compressed (`.gz`, `.bz2`, `.xz`, `.zst`, by extension), local or on any fsspec file system, e.g.
  a Hub dataset's files: `hf://datasets/<org>/<name>/data/*.jsonl.gz`.
- A row with a missing or an extra column, an empty text cell, a truncated or corrupt compressed stream: a
  `PoolFileError` naming the file (and the line), never a row silently shifted or dropped.

`resolve_data_files` expands the patterns (each glob's matches sorted; the patterns in the order given), and
`file_sha256` fingerprints a file's bytes: the labelling cache keys each file's soft labels by it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

DATA_FORMATS = ("tsv", "csv", "jsonl", "json", "parquet")
COMPRESSIONS = {"gz": "gzip", "bz2": "bz2", "xz": "xz", "zst": "zstd"}
_GLOB_CHARS = "*?["
_WRITE_BATCH = 8192


class PoolFileError(ValueError):
    """A pool file that cannot be read as it should: names the file, the line where there is one, and the fix."""


def _fs_and_path(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def resolve_data_files(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The files `patterns` name, in order: a path, a URL, a glob (its matches sorted), or a list of these.

    A pattern that matches nothing, a file given twice and a file of an unknown format are refused here, before any
    work starts.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files: list[str] = []
    for pattern in map(str, patterns):
        fs, path = _fs_and_path(pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if any(c in path for c in _GLOB_CHARS):
            matches = sorted(fs.glob(path))
            if not matches:
                raise FileNotFoundError(f"No file matches {pattern!r}.")
        elif fs.isfile(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"{pattern} does not exist (expected a data file or a glob of them).")
        for match in matches:
            name = match if protocol in ("file", "local") else f"{protocol}://{match}"
            data_format(name)  # unknown formats are refused before anything is read
            if name in files:
                raise ValueError(f"{name} is given twice (patterns {list(map(str, patterns))}): each file once.")
            files.append(name)
    return files


def data_format(path: str) -> tuple[str, str | None]:
    """(format, compression) of a data file from its name: `pool.tsv.gz` -> ("tsv", "gzip")."""
    name = os.path.basename(str(path)).lower()
    parts = name.split(".")
    compression = COMPRESSIONS.get(parts[-1]) if len(parts) > 2 else None
    ext = parts[-2] if compression else parts[-1]
    if len(parts) < 2 or ext not in DATA_FORMATS:
        suffixes = [f".{f}" for f in DATA_FORMATS]
        raise ValueError(
            f"Unsupported data file {os.path.basename(str(path))!r}: use {suffixes}, optionally compressed "
            f"({['.' + c for c in COMPRESSIONS]})."
        )
    return ext, compression


def file_sha256(path: str) -> str:
    """sha256 of the file's bytes as stored (compressed): what identifies a pool file in the labelling cache."""
    fs, fs_path = _fs_and_path(path)
    digest = hashlib.sha256()
    with fs.open(fs_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError, OSError, UnicodeDecodeError)


def _open_text(path: str):
    import fsspec

    _, compression = data_format(path)
    return fsspec.open(path, "rt", compression=compression, encoding="utf-8", newline="")


class _Reader:
    """Rows of one pool file as dicts of strings, checked as they are read; `line` is where the reader is."""

    def __init__(self, path: str, text_columns: Sequence[str]):
        self.path, self.name = path, os.path.basename(path)
        self.text_columns = list(text_columns)
        self.format, _ = data_format(path)
        self.line = 0
        self.columns: list[str] | None = None

    def error(self, message: str, line: bool = True) -> PoolFileError:
        where = f"{self.name}, line {self.line}" if line and self.line else self.name
        return PoolFileError(f"{where}: {message} (file {self.path})")

    def check_columns(self) -> None:
        missing = [c for c in self.text_columns if c not in self.columns]
        if missing:
            raise self.error(
                f"no column {missing}; its columns are {self.columns}. Pass text_columns naming two of them.",
                line=False,
            )

    def check_text(self, row: dict) -> None:
        for column in self.text_columns:
            value = row[column]
            if not isinstance(value, str):
                raise self.error(f"{column!r} is {type(value).__name__} {value!r}, not text")
            if not value.strip():
                raise self.error(f"empty {column!r}: drop or fill that row (a teacher would label an empty text)")

    def rows(self) -> Iterator[dict]:
        try:
            if self.format in ("tsv", "csv"):
                yield from self._delimited()
            elif self.format == "parquet":
                yield from self._parquet()
            else:
                yield from self._json()
        except PoolFileError:
            raise
        except _STREAM_ERRORS as err:
            raise self.error(
                f"the file is damaged or truncated after {self.line} lines ({type(err).__name__}: {err}). Copy it "
                "again (check it against its checksum); the files labelled before it are kept."
            ) from None

    def _delimited(self) -> Iterator[dict]:
        with _open_text(self.path) as f:
            if self.format == "tsv":
                reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(f)
            try:
                self.columns = next(reader)
            except StopIteration:
                raise self.error("the file is empty (not even a header line)", line=False) from None
            self.line = reader.line_num
            self.check_columns()
            width = len(self.columns)
            for fields in reader:
                self.line = reader.line_num
                if not fields:  # a blank line
                    continue
                if len(fields) != width:
                    kind = "missing" if len(fields) < width else "extra"
                    raise self.error(
                        f"{len(fields)} fields where the header has {width} ({self.columns}): a {kind} column"
                        + (" (a tab inside a cell?)" if kind == "extra" else "")
                    )
                row = dict(zip(self.columns, fields))
                self.check_text(row)
                yield row

    def _json(self) -> Iterator[dict]:
        with _open_text(self.path) as f:
            first = f.read(1)
            while first and first.isspace():
                first = f.read(1)
            if first == "[":  # one JSON array
                try:
                    records = json.loads(first + f.read())
                except json.JSONDecodeError as err:
                    raise self.error(f"not valid JSON ({err})", line=False) from None
                lines: Iterator[tuple[int, object]] = enumerate(records, start=1)
                unit = "record"
            else:
                text = io.StringIO(first)
                lines = ((n, raw) for n, raw in enumerate(_chain_lines(text, f), start=1))
                unit = "line"
            for n, item in lines:
                self.line = n
                if unit == "line":
                    if not item.strip():
                        continue
                    try:
                        item = json.loads(item)
                    except json.JSONDecodeError as err:
                        raise self.error(f"not a JSON object ({err})") from None
                if not isinstance(item, dict):
                    raise self.error(f"a JSON {type(item).__name__}, not an object")
                if self.columns is None:
                    self.columns = list(item)
                    self.check_columns()
                if set(item) != set(self.columns):
                    missing = [c for c in self.columns if c not in item]
                    extra = [c for c in item if c not in self.columns]
                    raise self.error(
                        f"keys differ from the first row's {self.columns}: missing {missing}, extra {extra}"
                    )
                self.check_text(item)
                yield item
        if self.columns is None:
            raise self.error("the file holds no rows", line=False)

    def _parquet(self) -> Iterator[dict]:
        import pyarrow.parquet as pq

        fs, fs_path = _fs_and_path(self.path)
        with fs.open(fs_path, "rb") as f:
            parquet = pq.ParquetFile(f)
            self.columns = parquet.schema_arrow.names
            self.check_columns()
            for batch in parquet.iter_batches(batch_size=_WRITE_BATCH):
                for row in batch.to_pylist():
                    self.line += 1
                    self.check_text(row)
                    yield row


def _chain_lines(head: io.StringIO, rest) -> Iterator[str]:
    """The lines of `head` + `rest` (the characters read to sniff the format, then the stream)."""
    carry = head.read()
    for line in rest:
        yield carry + line
        carry = ""
    if carry:
        yield carry


def read_data_file(path: str, text_columns: Sequence[str], arrow_file: str | os.PathLike):
    """Stream one pool file into `arrow_file` (checked row by row) and return it as a memory-mapped `Dataset`.

    Memory stays at one write batch whatever the file's size. The Arrow file is written under a temporary name and
    renamed into place, so a half-written one is never read back.
    """
    from datasets import Dataset, Features, Value
    from datasets.arrow_writer import ArrowWriter

    reader = _Reader(str(path), text_columns)
    arrow_file = Path(arrow_file)
    arrow_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = arrow_file.with_name(f".{arrow_file.name}.tmp")
    rows = reader.rows()
    try:
        first = next(rows)
    except StopIteration:
        raise reader.error("the file holds a header but no rows", line=False) from None
    if reader.format in ("tsv", "csv"):
        features = Features({c: Value("string") for c in reader.columns})
    else:
        features = None  # JSON / parquet keep their own types
    count = 0
    with ArrowWriter(path=str(tmp), features=features) as writer:
        batch = [first]
        for row in rows:
            batch.append(row)
            if len(batch) == _WRITE_BATCH:
                writer.write_batch({c: [r[c] for r in batch] for c in reader.columns})
                count += len(batch)
                batch = []
        if batch:
            writer.write_batch({c: [r[c] for r in batch] for c in reader.columns})
            count += len(batch)
        writer.finalize()
    if reader.format in ("tsv", "csv"):
        _numbers_from_text(tmp, set(text_columns))
    os.replace(tmp, arrow_file)
    dataset = Dataset.from_file(str(arrow_file))
    if len(dataset) != count:  # cannot happen unless the disk lied; never label a short file
        raise reader.error(f"{len(dataset)} rows read back from {arrow_file}, {count} written", line=False)
    return dataset


def _numbers_from_text(arrow_file: Path, keep_text: set[str]) -> None:
    """Columns of a csv/tsv file whose every cell is an integer (else a number) as int64 (float64), in place."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    table = Dataset.from_file(str(arrow_file)).data.table
    changed = False
    for name in table.column_names:
        if name in keep_text:
            continue
        for kind in (pa.int64(), pa.float64()):
            try:
                column = pc.cast(table.column(name), kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            table = table.set_column(table.column_names.index(name), name, column)
            changed = True
            break
    if changed:
        tmp = arrow_file.with_name(f".{arrow_file.name}.typed")
        with ArrowWriter(path=str(tmp)) as writer:
            writer.write_table(table)
            writer.finalize()
        del table
        os.replace(tmp, arrow_file)


def join_schemas(parts: list) -> list:
    """`parts` (datasets read from the files of one pool) with one schema: a column typed differently in two files
    (an id that is a number in one and text in another) becomes text in all."""
    from datasets import Features, Value

    names = parts[0].column_names
    if any(p.column_names != names for p in parts):
        raise ValueError(f"The files have different columns: {sorted({tuple(p.column_names) for p in parts})}.")
    conflicting = [n for n in names if len({str(p.features[n]) for p in parts}) > 1]
    if not conflicting:
        return parts
    return [p.cast(Features({**p.features, **{n: Value("string") for n in conflicting}})) for p in parts]
