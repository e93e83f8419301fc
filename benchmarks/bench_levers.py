"""Levers on the TMKD student, each measured on VALIDATION over several seeds, beside the ablation's own runs.

The ablation (`bench_ablation.py`) fixes every hyper-parameter from the pipeline's config. This script varies a few
of them on one ablation row at a time, reusing that ablation's teachers and soft-label caches, so the teachers are
the same and only the lever moves:

- `alpha`, `temperature`: stage 2's mix of golden labels and soft labels (alpha 1: soft labels only);
- `stage2_epochs`, `stage1_epochs`: the budgets; `stage2_learning_rate`: how far stage 2 moves the student;
- `student_layers`: which backbone layers the student keeps (e.g. `0-2-4`, `0-1-2`);
- `stage1_augment_copies`: stage 1 on the pool plus N augmented copies of it (`tmkd_hf.augmentation.augment_pairs`;
  the teachers label the copies once, cached beside the ablation's other caches);
- `stage1_with_train`: 1 = stage 1 on the pool plus the labelled train split's pairs, their golden labels unused
  (the teachers' soft labels of train are already cached): more real in-domain pairs for stage 1 at no labelling
  cost.

Grid: `--grid alpha=0.5,1.0 temperature=1,2,4` runs every combination; each one's runs go to
`<ablation_dir>/levers/<row>/<lever=value,...>__seed<N>.json`, resumable like the ablation. The settings that are not
on the grid are the ablation's (its settings.json). Choose on validation, report test beside it: a lever chosen on
test would overstate what a user gets.

Stage-1 students are kept (`<ablation_dir>/stage1_students/`, see bench_ablation's `--keep-stage1`): a lever that acts
after stage 1 (`alpha`, `stage2_epochs`, `stage2_learning_rate`) on a row with stage 1 costs stage 2 only once that
stage 1 has run.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_levers.py \
          --ablation_dir outputs/ablation-qnli-mean \
          --row MKD --grid alpha=0.5,1.0 temperature=1,2,4 --seeds 1 2
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ablation as ablation_bench  # noqa: E402
from bench_labelling import RESULTS, code_version, command_line, load_average, machine  # noqa: E402

LEVERS = {  # name -> parser of one value on the command line
    "alpha": float,
    "temperature": float,
    "stage1_epochs": float,
    "stage2_epochs": float,
    "stage2_learning_rate": float,
    "student_layers": lambda v: [int(x) for x in v.split("-")],
    "stage1_augment_copies": int,
    "stage1_with_train": int,
}
STAGE1_DATA_LEVERS = ablation_bench.STAGE1_DATA_LEVERS  # levers on what stage 1 reads, not ablation settings


def parse_grid(items: list[str]) -> dict[str, list]:
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or name not in LEVERS or not values:
            raise SystemExit(f"--grid takes LEVER=V1,V2,... with LEVER one of {sorted(LEVERS)}; got {item!r}")
        try:
            grid[name] = [LEVERS[name](v) for v in values.split(",")]
        except ValueError as err:
            raise SystemExit(f"--grid {item!r}: {err}") from None
    return grid


def tag_of(config: dict) -> str:
    def show(v):
        return "-".join(map(str, v)) if isinstance(v, list) else f"{v:g}"

    return ",".join(f"{k}={show(v)}" for k, v in sorted(config.items()))


def ablation_args(ablation_dir: Path, settings: dict) -> argparse.Namespace:
    """bench_ablation's arguments that reproduce `settings` (so its settings check passes and the data match)."""
    args = argparse.Namespace(
        rte=settings["task"] == "rte", backbone=None, student_layers=settings["student_layers"],
        max_train_rows=settings["max_train_rows"], max_unlabeled_rows=settings["max_unlabeled_rows"],
        max_eval_rows=settings["max_eval_rows"], max_length=settings["max_length"],
        batch_size=settings["batch_size"], teacher_aggregation=settings["teacher_aggregation"],
        readout=settings["readout"], epochs_scale=1.0, seeds=[], stop_after=None, output_dir=str(ablation_dir),
    )
    if not settings["backbone"].startswith("all-MiniLM-L6-v2"):
        args.backbone = settings["backbone"]
    # a quick-check ablation scaled its epochs: recover the scale from the teachers' budget
    config = json.loads(ablation_bench.PIPELINE_CONFIG.read_text())
    args.epochs_scale = settings["teacher_epochs"] / config["teacher_epochs"]
    args.stage1_epochs = settings["stage1_epochs"] / args.epochs_scale
    args.alpha = settings["alpha"]
    if ablation_bench.settings_of(args) != settings:
        changed = {k: v for k, v in ablation_bench.settings_of(args).items() if settings.get(k) != v}
        raise SystemExit(f"cannot reproduce the settings of {ablation_dir} ({changed}); rerun its ablation first")
    return args


class Levers:
    def __init__(self, ablation_dir: Path, row: str, seeds: list[int]):
        saved = ablation_dir / "settings.json"
        if not saved.is_file():
            raise SystemExit(f"{ablation_dir} holds no ablation (no settings.json): run bench_ablation.py first")
        self.base_settings = json.loads(saved.read_text())
        self.ablation_dir, self.row, self.seeds = ablation_dir, row, seeds
        self.ablation = ablation_bench.Ablation(ablation_args(ablation_dir, self.base_settings), ablation_dir)
        self.ablation.keep_stage1 = True  # a stage-2 lever (alpha, stage2_epochs) then costs stage 2 only
        self.teacher_dirs = self.ablation.teachers()  # reused: a finished ablation trains nothing here
        self.ablation.label(self.teacher_dirs)
        self.out = ablation_dir / "levers" / row
        self.augmented_pools: dict[int, dict] = {}

    def pool_sets(self, copies: int) -> dict:
        """The pool plus `copies` augmented copies, labelled by the teachers once (cached), tokenized."""
        if copies == 0:
            return self.ablation.pool_sets
        if copies not in self.augmented_pools:
            from datasets import concatenate_datasets

            from tmkd_hf import label_with_teachers
            from tmkd_hf.augmentation import augment_pairs, word_neighbours

            a = self.ablation
            start = time.perf_counter()
            extra = augment_pairs(a.raw["pool"], text_columns=tuple(a.text_columns), copies=copies,
                                  neighbours=word_neighbours(a.backbone), seed=0)
            labelled = label_with_teachers(
                extra, self.teacher_dirs, text_columns=tuple(a.text_columns),
                batch_size=a.settings["eval_batch_size"], max_length=a.settings["max_length"],
                output_dir=str(self.ablation_dir / "labelled" / f"pool-augmented-{copies}"),
                label_names_order=a.label_names, show_progress=False,
            )
            labelled = labelled.select_columns([*a.text_columns, "teacher_logits"])
            pool = a.labelled["pool"].select_columns([*a.text_columns, "teacher_logits"])
            full = a.tokenized(concatenate_datasets([pool, labelled.cast(pool.features)]))
            a.log(f"pool + {copies} augmented cop{'y' if copies == 1 else 'ies'}: {len(full)} rows "
                  f"({time.perf_counter() - start:.0f} s to augment and label)")
            self.augmented_pools[copies] = {"all": full, "first": ablation_bench._teacher_subset(full, [0])}
        return self.augmented_pools[copies]

    def with_train(self, pool_sets: dict) -> dict:
        """`pool_sets` plus the train split's pairs with their soft labels (golden labels dropped: stage 1 reads
        only the teachers), for each teacher subset."""
        from datasets import concatenate_datasets

        out = {}
        for key, pool in pool_sets.items():
            train = self.ablation.train_sets[key].select_columns(pool.column_names)
            out[key] = concatenate_datasets([pool, train.cast(pool.features)])
        self.ablation.log(f"stage 1 on the pool and the train pairs: {len(out['all'])} rows")
        return out

    def run(self, grid: dict[str, list]) -> list[str]:
        names = sorted(grid)
        tags = []
        for values in itertools.product(*(grid[n] for n in names)):
            config = dict(zip(names, values))
            tag = tag_of(config)
            tags.append(tag)
            variant = copy.copy(self.ablation)
            variant.settings = {**self.base_settings, **{k: v for k, v in config.items()
                                                         if k not in STAGE1_DATA_LEVERS}}
            for k in STAGE1_DATA_LEVERS:
                variant.settings[k] = config.get(k, 0)
            variant.pool_sets = self.pool_sets(variant.settings["stage1_augment_copies"])
            if variant.settings["stage1_with_train"]:
                variant.pool_sets = self.with_train(variant.pool_sets)
            variant.out = self.out / tag  # run files: <out>/<tag>/runs/<row>__seed<N>.json
            for seed in self.seeds:
                path = ablation_bench.run_file(variant.out, self.row, seed)
                if path.is_file():
                    variant.log(f"skip {self.row} [{tag}] seed {seed}: done")
                    continue
                variant.log(f"start {self.row} [{tag}] seed {seed}")
                variant.student_run(self.row, seed, 100 if ablation_bench.ROW_RECIPES[self.row][2] else 0)
        return tags


def _cell(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _paired(diffs: list[float]) -> str:
    """Mean of per-seed differences (points) ± its standard error, and how many seeds were paired."""
    diffs = [100 * d for d in diffs]
    if not diffs:
        return "–"
    if len(diffs) == 1:
        return f"{diffs[0]:+.1f} (1 seed)"
    return f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.1f} ({len(diffs)} seeds)"


def build_table(ablation_dir: Path, row: str, reference: str | None = None) -> str:
    """One line per lever setting that has runs; the ablation's own runs of `row` as the reference line, or the
    setting `reference`. Settings often run on different seeds: each line also gives its validation difference to
    the reference on the seeds both have (paired; seeds vary more than most levers do)."""
    settings = json.loads((ablation_dir / "settings.json").read_text())
    own = "(the ablation's own)"
    lines = [f"Row {row}; everything else as the ablation in `{ablation_dir.name}` (alpha {settings['alpha']:g}, "
             f"T {settings['temperature']:g}, stage 2 {settings['stage2_epochs']:g} epochs, stage 1 "
             f"{settings['stage1_epochs']:g}, layers {settings['student_layers']}, readout {settings['readout']}). "
             "Chosen on validation; mean ± sample std over seeds, and each seed; the last column: validation minus "
             f"the reference ({reference or own}) on the same seeds, mean ± standard error.", "",
             "| setting | seeds | val acc | val acc by seed | test acc | test acc by seed | val vs reference |",
             "|---|---|---|---|---|---|---|"]
    variants = [(own, ablation_dir / "runs")]
    variants += [(p.name, p / "runs") for p in sorted((ablation_dir / "levers" / row).glob("*")) if p.is_dir()]
    found = {}
    for name, runs_dir in variants:
        runs = sorted((json.loads(p.read_text()) for p in runs_dir.glob(f"{row}__seed*.json")),
                      key=lambda r: r["seed"])
        if runs:
            found[name] = runs
    if reference is not None and reference not in found:
        raise SystemExit(f"--reference {reference!r}: no runs of {row} (settings with runs: {sorted(found)})")
    reference = reference or own  # the ablation may not have run this row: then nothing is paired
    ref_val = {r["seed"]: r["metrics"]["validation"]["accuracy"] for r in found.get(reference, [])}
    best = None
    for name, runs in found.items():
        val = [r["metrics"]["validation"]["accuracy"] for r in runs]
        test = [r["metrics"]["test"]["accuracy"] for r in runs]
        paired = "(reference)" if name == reference else _paired(
            [r["metrics"]["validation"]["accuracy"] - ref_val[r["seed"]] for r in runs if r["seed"] in ref_val])
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in runs)} | {_cell(val)} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in val)} | {_cell(test)} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in test)} | {paired} |")
        if best is None or statistics.mean(val) > best[1]:
            best = (name, statistics.mean(val))
    if best:
        lines += ["", f"Best mean on validation: {best[0]} ({100 * best[1]:.1f}; over its own seeds)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablation_dir", "--ablation-dir", required=True,
                        help="a bench_ablation.py output_dir: its teachers, caches and settings are reused")
    parser.add_argument("--row", default="MKD", choices=list(ablation_bench.ROW_RECIPES))
    parser.add_argument("--grid", nargs="+", default=[], help=f"LEVER=V1,V2,... with LEVER in {sorted(LEVERS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--reference", help="the setting (e.g. 'stage1_epochs=6') each line is compared with on the "
                                            "same seeds (default: the ablation's own runs)")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the table to {RESULTS.name}")
    args = parser.parse_args(argv)
    grid = parse_grid(args.grid)
    ablation_dir = Path(args.ablation_dir)
    if not args.table_only:
        if not grid:
            parser.error("--grid is required (or --table-only)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        if args.threads:
            torch.set_num_threads(args.threads)
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        load_before, started = load_average(), time.perf_counter()
        Levers(ablation_dir, args.row, args.seeds).run(grid)
        elapsed = time.perf_counter() - started
    table = build_table(ablation_dir, args.row, args.reference)
    print(table)
    if not args.table_only and not args.no_record:
        command = command_line(__file__, argv)
        report = [f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — levers on {args.row} (bench_levers.py)", "",
                  f"- machine: {machine()}", f"- load average at the start: {load_before}, at the end: "
                  f"{load_average()}; this session's part took {elapsed / 60:.1f} min",
                  f"- command: `{command}` (resumable: finished runs reused)",
                  f"- code: tmkd_hf at {code_version()}", "", table]
        with RESULTS.open("a") as f:
            f.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
