"""Cut the small QNLI slices shipped in `data/qnli/` from the full re-split QNLI files, reproducibly.

Whole questions are taken, never single rows: every pair of a chosen question goes into the slice, so the slices
are question-disjoint: train/validation/test because their sources are, and unlabeled because it skips every
question already in a labelled slice (the full unlabeled pool shares questions with the full train split).
Questions are drawn in a seeded random order until the slice reaches its target row count; the rows
keep their source order and their source text byte for byte (lines are copied, never re-quoted).

    python data/qnli/make_slices.py                   # write the slices next to this script
    python data/qnli/make_slices.py --check           # verify the shipped slices are reproduced exactly
    python data/qnli/make_slices.py --source DIR --out DIR

The source files are plain TSV with one header line and no quoting (read with `csv.QUOTE_NONE`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOURCE = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data", "qnli"))
SEED = 2020
# split -> (target rows, seed offset). A slice ends with the first question that reaches the target;
# unlabeled has no real target: it is every pair whose question is in no labelled slice.
TARGETS = {"train": (1200, 0), "validation": (300, 1), "test": (400, 2), "unlabeled": (10**9, 3)}


def read_tsv_lines(path: str) -> tuple[str, list[str], list[list[str]]]:
    """Header line, data lines (with their newline) and their fields; no quote processing at all."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header, rows = lines[0], lines[1:]
    n = len(header.split("\t"))
    fields = [r.split("\t") for r in rows]
    bad = [i + 2 for i, fs in enumerate(fields) if len(fs) != n]
    if bad:
        raise ValueError(f"{path}: lines {bad[:5]} do not have {n} tab-separated fields (is it quoted TSV?)")
    return header, rows, fields


def cut_slice(
    rows: list[str], fields: list[list[str]], question_col: int, target: int, seed: int, exclude: set[str] = frozenset()
) -> list[str]:
    """Rows of a seeded random selection of whole questions (none in `exclude`), >= `target` rows, in source order."""
    questions = [q for q in dict.fromkeys(fs[question_col] for fs in fields) if q not in exclude]  # first-seen order
    random.Random(seed).shuffle(questions)
    rows_per_question: dict[str, int] = {}
    for fs in fields:
        rows_per_question[fs[question_col]] = rows_per_question.get(fs[question_col], 0) + 1
    chosen, count = set(), 0
    for q in questions:
        if count >= target:
            break
        chosen.add(q)
        count += rows_per_question[q]
    return [r for r, fs in zip(rows, fields) if fs[question_col] in chosen]


def make_slices(source: str) -> dict[str, str]:
    """File name -> file content of every slice."""
    out, taken = {}, set()
    for split, (target, offset) in TARGETS.items():  # unlabeled last: it skips every question taken before
        header, rows, fields = read_tsv_lines(os.path.join(source, f"{split}.tsv"))
        question_col = header.split("\t").index("question")
        selected = cut_slice(rows, fields, question_col, target, SEED + offset, exclude=taken)
        taken |= {line.split("\t")[question_col] for line in selected}
        out[f"{split}.tsv"] = "".join(line + "\n" for line in [header, *selected])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="directory with the full train/validation/test/"
                        "unlabeled.tsv (default: ../shared/data/qnli from the repository root)")
    parser.add_argument("--out", default=HERE, help="where to write the slices (default: next to this script)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args()
    if not os.path.isdir(args.source):
        parser.error(f"source directory {args.source} does not exist; pass --source DIR")
    slices = make_slices(args.source)
    mismatched = []
    for name, content in slices.items():
        path = os.path.join(args.out, name)
        data = content.encode("utf-8")
        rows = content.count("\n") - 1
        questions = len({line.split("\t")[1] for line in content.split("\n")[1:] if line})
        digest = hashlib.sha256(data).hexdigest()[:16]
        if args.check:
            with open(path, "rb") as f:
                same = f.read() == data
            mismatched += [] if same else [name]
            print(f"{name:16s} {rows:5d} rows {questions:5d} questions sha256 {digest}  {'ok' if same else 'DIFFERS'}")
        else:
            with open(path, "wb") as f:
                f.write(data)
            print(f"{name:16s} {rows:5d} rows {questions:5d} questions sha256 {digest}  -> {path}")
    if mismatched:
        print(f"Not reproduced: {mismatched}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
