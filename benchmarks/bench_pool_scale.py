"""Stage 1 at scale (issue 33): TMKD's stage 1 on a large unlabelled pool from other articles, with a strong teacher.

The ablation's stage 1 saw 4,627 pairs (`qnli/unlabeled.tsv`) from the very Wikipedia articles that train, validation
and test come from. Here stage 1 reads the SQuAD pool (`../shared/data/squad_pool/`: 436,852 question-sentence pairs
from 442 other articles, 10 shards; the first k shards are a random k/10 of the articles), labelled once by every
teacher with `label_with_teachers(files, backend=...)` (onnx-int8-ffn-fp32 by default: int8 with the feed-forward
output layers in fp32; plain int8 cost the MiniLM teachers 0.6-1.1 test points and their students 0.8, issue 32),
one cache per teacher group whose per-file logits (`files/*/logits.npy` + `file.json`) are small enough to commit.

Teachers: the three MiniLM-L6 teachers and MPNet-base of a `bench_mpnet.py` output (`--teachers-from DIR`; train them
with `bench_mpnet.py --teachers-only`). Stage 2 is bench_mpnet's: the QNLI train split with the same teachers' soft
labels (its torch cache, reused), the same student (layers 0, 1, 2 of all-MiniLM-L6-v2, mean readout), budgets and
seeds; the numbers are on QNLI validation and test (accuracy, MAP / MRR per question).

Rows (students; `ROW_RECIPES`): TKD_mpnet (MPNet alone, one head), TMKD_all (all 4 teachers, one head each),
TMKD_minilm (the 3 MiniLM teachers), and the peers `peer_cls` / `peer_mean` (`PEER_ROWS`). Each run is a (row, pool,
stage-1 epochs, seed). Lever `--student-layers L [L ...]`: the backbone layers the student keeps instead of the
settings' (e.g. `0 1 2 3 4 5`, the whole MiniLM-L6, or `0 2 4`), for our students and the peers alike (a peer's
learning rate stays the one `--tune-peer` chose for the default student). Its runs are named apart
(`run_name(..., lever)`: `TMKD_all__squad1__e1__L0-1-2-3-4-5`), record `student_layers` (and, as every new run,
`student_parameters`) and are tabled as their own rows, e.g. `TMKD_all (layers 0-5)`, with their difference to the
default student's row at the same pool and epochs; the teachers and the saved settings do not change, so they share
an output_dir with the default runs:

    ... --pools squad1 --stage1-epochs 1 --rows TMKD_all TKD_mpnet --student-layers 0 1 2 3 4 5 --seeds 1 2 3

Levers of our students' distillation loss, the same way (what closes the gap to the MPNet teacher?): `--temperature T`
(both stages), `--soft-loss {kl,soft_ce,mse}` (both stages) and `--stage2-alpha A` (stage 2's weight of the soft
loss, 1 - A on the labels; stage 1 is soft only). They combine with each other and with `--student-layers`; each
value that differs from the settings' (`Lever`) adds a name part, in this order: `__L0-1-2-3-4-5`, `__T4`, `__mse`,
`__a1`, records its value in the run (`student_layers`, `temperature`, `soft_loss`, `stage2_alpha`) and its label,
e.g. `TKD_mpnet (T 4, mse, alpha 1)`. The peers have no such loss (MSE on a margin): these levers refuse them.

    ... --pools squad1 --stage1-epochs 1 --rows TMKD_all TKD_mpnet --temperature 4 --stage2-alpha 1 --seeds 1 2 3

Pools:

| pool | what |
|---|---|
| `squadK` | the first K shards of the SQuAD pool (K = 1, 2, 4, 10: about 44k, 88k, 175k, 437k pairs) |
| `qnli` | `qnli/unlabeled.tsv` (4,627 pairs from the evaluation articles), labelled with the same backend |
| `squad-nN` | N pairs drawn (seed 0) from the first SQuAD shard: the control at the old pool's size |

Stage 1's length is given per run (`--stage1-epochs`, and its steps are in the table): choose it per pool size on
validation by running a few and reading the validation column. Long stage 1s save a Trainer checkpoint every
`--checkpoint-steps` steps, and a killed run resumes from its last checkpoint; every finished run is one JSON file under
`<output_dir>/runs/`, reused on the next start.

`--table-only` writes `pool_scale.md` and `pool_scale.png` (test accuracy against stage-1 pool pairs, log x, both
pools, each seed a dot) from the saved runs.

Run:  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/bench_pool_scale.py --threads 2 \\
          --teachers-from outputs/mpnet-qnli --pools squad1 --stage1-epochs 1 --rows TMKD_all TKD_mpnet --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

import bench_ablation as ab  # noqa: E402
import bench_mpnet as mp  # noqa: E402
from bench_labelling import DATA_ROOT, RESULTS, code_version, command_line, load_average, machine  # noqa: E402

ROW_RECIPES = {  # teacher subset (mp.MpnetBench.teacher_subsets), heads
    "TKD_mpnet": ("big", 1),
    "TMKD_all": ("all", "all"),
    "TMKD_minilm": ("minilm", "all"),
}
PEER_ROWS = {"peer_cls": "cls", "peer_mean": "mean"}  # sentence-transformers CrossEncoderTrainer + MSELoss
ALL_ROWS = (*ROW_RECIPES, *PEER_ROWS)
DESCRIPTIONS = {
    "TKD_mpnet": "stage 1 + stage 2 with the MPNet teacher alone, one head",
    "TMKD_all": "TMKD, all 4 teachers, one head each",
    "TMKD_minilm": "TMKD, the 3 MiniLM teachers, one head each",
    "peer_cls": "peer: CrossEncoder(num_labels=1) ([CLS]), CrossEncoderTrainer, MSE to the 4 teachers' mean margin",
    "peer_mean": "peer: Transformer -> Pooling(mean) -> Dense(1) CrossEncoder, the same training",
}
GROUPS = {"minilm": list(range(mp.NUM_MINILM)), "mpnet": [mp.BIG]}  # teacher groups labelled apart (own tokenizers)
SUBSET_GROUPS = {"big": ["mpnet"], "minilm": ["minilm"], "all": ["minilm", "mpnet"]}
POOL_PATTERN = re.compile(r"^(squad(?P<shards>\d+)|qnli|squad-n(?P<rows>\d+))$")
BAR = 83.2  # issue 33: TMKD within 2 points of the MPNet teacher's 85.2 on QNLI test, mean of 5 seeds, std <= 1.0
DEFAULT_LABELS_DIR = Path(__file__).resolve().parent / "soft_labels"
CONTROL_SEED = 0  # which pairs of the first shard make the `squad-nN` control
# a lever -> the setting it stands in for, in the order of the run names' and labels' parts
LEVER_SETTINGS = {"student_layers": "student_layers", "temperature": "temperature", "soft_loss": "soft_loss",
                  "stage2_alpha": "alpha"}
LOSS_LEVERS = {"temperature": "--temperature", "soft_loss": "--soft-loss", "stage2_alpha": "--stage2-alpha"}


def shard_files(root: Path) -> list[Path]:
    files = sorted(root.glob("pool-*-of-*.tsv.gz"))
    if not files:
        raise SystemExit(f"no SQuAD pool shards (pool-*-of-*.tsv.gz) under {root}; see ../shared/data/README.md")
    return files


def check_pool(name: str, num_shards: int) -> str:
    match = POOL_PATTERN.match(name)
    if not match:
        raise argparse.ArgumentTypeError(f"unknown pool {name!r}: squadK (K shards), qnli, or squad-nN (N pairs)")
    if match["shards"] and not 1 <= int(match["shards"]) <= num_shards:
        raise argparse.ArgumentTypeError(f"pool {name}: the SQuAD pool has {num_shards} shards")
    return name


@dataclass(frozen=True)
class Lever:
    """What a run changes apart from the saved settings (None: the settings' value; `Lever()`: the default run). The
    settings are fixed per output_dir, so lever runs share it with the default runs and are named and tabled apart."""

    student_layers: tuple[int, ...] | None = None
    temperature: float | None = None
    soft_loss: str | None = None
    stage2_alpha: float | None = None

    @classmethod
    def of(cls, values: dict, settings: dict) -> Lever:
        """The lever of `values` (lever -> value, None: not given): a value equal to the settings' is no lever, so
        giving the settings' own value is the default run (and a run made before a lever existed has none)."""
        def plain(value):
            return tuple(value) if isinstance(value, list) else value

        return cls(**{k: plain(v) for k, v in values.items()
                      if k in LEVER_SETTINGS and v is not None and plain(v) != plain(settings[LEVER_SETTINGS[k]])})

    def given(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __bool__(self) -> bool:
        return bool(self.given())

    def record(self) -> dict:
        """The run JSON's lever keys (a default run: none, as before the levers)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.given().items()}

    def name(self) -> str:
        """The run-name suffix, e.g. `__L0-1-2-3-4-5__T4__mse__a1` ('' for the default run)."""
        parts = (self.student_layers and "L" + "-".join(map(str, self.student_layers)),
                 self.temperature is not None and f"T{self.temperature:g}", self.soft_loss,
                 self.stage2_alpha is not None and f"a{self.stage2_alpha:g}")
        return "".join(f"__{p}" for p in parts if p)

    def label(self) -> str:
        """For people, e.g. 'layers 0-5, T 4, mse, alpha 1' ('' for the default run)."""
        parts = (self.student_layers and f"layers {layers_label(self.student_layers)}",
                 self.temperature is not None and f"T {self.temperature:g}", self.soft_loss,
                 self.stage2_alpha is not None and f"alpha {self.stage2_alpha:g}")
        return ", ".join(p for p in parts if p)

    def order(self) -> tuple:
        """Table order: the default run first, then lever by lever (layers: fewer first)."""
        return tuple((0,) if v is None else (1, len(v), *v) if isinstance(v, tuple) else (1, v)
                     for v in (getattr(self, f.name) for f in fields(self)))


def run_name(row: str, pool: str, epochs: float, lever: Lever = Lever()) -> str:
    """A run's name; a lever run (`lever`: what differs from the settings) has its own."""
    return f"{row}__{pool}__e{epochs:g}{lever.name()}"


def layers_label(layers: tuple[int, ...]) -> str:
    """Layer indices for people: consecutive ones as a range (0 1 2 3 4 5 -> '0-5', 0 2 4 -> '0,2,4')."""
    parts, start = [], 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i] != layers[i - 1] + 1:
            parts.append(f"{layers[start]}" if i - start == 1 else f"{layers[start]}-{layers[i - 1]}")
            start = i
    return ",".join(parts)


def row_label(row: str, lever: Lever = Lever()) -> str:
    return f"{row} ({lever.label()})" if lever else row


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"layer {value}: give 0-based indices (0, 1, ...)")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"temperature {text}: a number > 0")
    return value


def weight(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"alpha {text}: a weight in [0, 1] (the labels get 1 - alpha)")
    return value


class PoolScaleBench(mp.MpnetBench):
    """bench_mpnet's teachers, QNLI soft labels and student, with stage 1 on a chosen pool."""

    def __init__(self, args, out: Path, teachers_from: Path):
        self.teachers_from = teachers_from
        big = teachers_from / "teachers" / f"teacher_{mp.BIG}"
        # the big teacher's folder gives MpnetBench its tokenizer (for training it, which never happens here); with
        # `--label-only` for the MiniLM group it need not exist yet
        super().__init__(args, out, str(big if (big / "config.json").is_file() else args.backbone or ab.minilm_dir()))
        self.shards = shard_files(Path(args.pool_dir))
        self.labels_dir = Path(args.labels_dir)
        self.pools: dict[tuple[str, str], object] = {}
        self.labelling_file = self.out / "pool_labelling.json"
        self.resumed: list[str] = []  # stages resumed from a checkpoint: their seconds count only the last start
        self.lever = Lever()  # what the runs change apart from the settings (`--student-layers`, `--temperature`, ...)

    # ----- teachers and the QNLI splits' soft labels: those of the bench_mpnet output -----

    def teachers_home(self) -> Path:
        return self.teachers_from

    def teachers(self, groups: tuple[str, ...] = tuple(GROUPS)) -> list[str]:
        """All 4 teachers' folders; those of `groups` must hold a trained teacher."""
        dirs = [self.teachers_from / "teachers" / f"teacher_{i}" for i in range(mp.BIG + 1)]
        needed = [dirs[i] for g in groups for i in GROUPS[g]]
        missing = [str(d) for d in needed if not (d / "config.json").is_file()]
        if missing:
            raise SystemExit(f"--teachers-from {self.teachers_from}: no trained teacher in {missing}; train them with "
                             "`python benchmarks/bench_mpnet.py --teachers-only --output_dir "
                             f"{self.teachers_from}` first")
        return [str(d) for d in dirs]

    def label(self, teacher_dirs: list[str]) -> None:
        # the QNLI splits (train for stage 2, validation and test for the numbers) as bench_mpnet labelled them
        linked = self.out / "labelled"
        if not linked.exists():
            linked.symlink_to((self.teachers_from / "labelled").resolve(), target_is_directory=True)
        self.teacher_dirs = teacher_dirs
        super().label(teacher_dirs)

    # ----- stage-1 pools, labelled file by file with the pool backend -----

    def pool_files(self, pool: str) -> list[str] | None:
        match = POOL_PATTERN.match(pool)
        if pool == "qnli":
            return None  # qnli/unlabeled.tsv as the ablation reads it
        if match["shards"]:
            return [str(f) for f in self.shards[: int(match["shards"])]]
        return [str(self.shards[0])]

    def labelled_files(self, files: list[str] | None, group: str, name: str):
        """`files` labelled by the teachers of `group` (None: the QNLI pool as read, row limit included)."""
        from tmkd_hf import label_with_teachers

        dirs = [self.teacher_dirs[i] for i in GROUPS[group]]
        start = time.perf_counter()
        labelled = label_with_teachers(
            self.raw["pool"] if files is None else files, dirs, text_columns=tuple(self.text_columns),
            batch_size=self.settings["eval_batch_size"],
            max_length=self.settings["max_length"], output_dir=str(self.labels_dir / name / group),
            label_names_order=self.label_names, show_progress=False, backend=self.settings["pool_backend"],
            onnx_dir=self.teachers_home() / "onnx_teachers",
        )
        seconds = round(time.perf_counter() - start, 1)
        if files is not None:
            self.record_labelling(name, group, files, seconds)
        self.log(f"pool {name} ({len(labelled)} pairs, {len(files or [1])} file(s)) labelled by the {group} teachers "
                 f"({self.settings['pool_backend']}): {seconds:.1f} s in this call")
        return labelled

    def record_labelling(self, name: str, group: str, files: list[str], seconds: float) -> None:
        """Each file's labelling seconds as the cache's per-file records say (the first, real measurement)."""
        folder = self.labels_dir / name / group / "files"
        record = json.loads(self.labelling_file.read_text()) if self.labelling_file.is_file() else {}
        for path in files:
            base = os.path.basename(path)
            for info in folder.glob(f"{base}-*/file.json"):
                data = json.loads(info.read_text())
                record.setdefault(group, {})[base] = {"rows": data["num_rows"], "seconds": data["seconds"],
                                                      "backend": self.settings["pool_backend"]}
        ab.write_json(self.labelling_file, record)

    def pool_dataset(self, pool: str, subset: str):
        """The stage-1 rows of `pool`, tokenized for the student, with the soft labels of teacher subset `subset`."""
        key = (pool, subset)
        if key not in self.pools:
            rows = self.pool_rows(pool, subset)
            if (pool, "tokens") not in self.pools:  # tokenized once per pool, whatever the teacher subset
                self.pools[pool, "tokens"] = self.tokenized(rows.remove_columns("teacher_logits"))
            self.pools[key] = self.pools[pool, "tokens"].add_column("teacher_logits", list(rows["teacher_logits"]))
        return self.pools[key]

    def pool_rows(self, pool: str, subset: str):
        """The stage-1 rows of `pool` as text, with the soft labels of teacher subset `subset`."""
        key = (pool, subset, "text")
        if key in self.pools:
            return self.pools[key]
        name = "qnli_pool" if pool == "qnli" else "squad_pool"
        files = self.pool_files(pool)
        parts = {g: self.labelled_files(files, g, name) for g in SUBSET_GROUPS[subset]}
        first = next(iter(parts.values()))
        logits = np.concatenate([np.asarray(p.with_format("numpy")["teacher_logits"]) for p in parts.values()], axis=1)
        rows = first.select_columns(self.text_columns)
        match = POOL_PATTERN.match(pool)
        if match["rows"]:  # the control: N pairs drawn from the first shard
            n = int(match["rows"])
            if n > len(rows):
                raise SystemExit(f"pool {pool}: the first shard has only {len(rows)} pairs")
            picked = np.sort(np.random.default_rng(CONTROL_SEED).choice(len(rows), size=n, replace=False))
            rows, logits = rows.select(picked), logits[picked]
        self.pools[key] = rows.add_column("teacher_logits", logits.tolist())
        return self.pools[key]

    # ----- one run -----

    def setting(self, lever: str):
        """This run's value of `lever`: the lever's where the run sets one, else the saved settings'."""
        value = getattr(self.lever, lever)
        return self.settings[LEVER_SETTINGS[lever]] if value is None else value

    def training_args(self, name: str, learning_rate: float, epochs: float, seed: int, alpha: float, **extra):
        args = super().training_args(name, learning_rate, epochs, seed, alpha, **extra)
        # the temperature and soft-loss levers apply to both stages (the settings' values without a lever)
        args.temperature, args.soft_loss = self.setting("temperature"), self.setting("soft_loss")
        if name.endswith("-stage1") and self.args.checkpoint_steps:  # long stage 1s: resumable
            from transformers.trainer_utils import SaveStrategy

            args.save_strategy = SaveStrategy.STEPS
            args.save_steps = self.args.checkpoint_steps
            args.save_total_limit = 1
        return args

    def train(self, name: str, model, dataset, tokenizer=None, **kwargs) -> float:
        from transformers.trainer_utils import get_last_checkpoint

        from tmkd_hf import MultiTeacherDistillationTrainer

        work = self.out / "work" / name
        resume = get_last_checkpoint(str(work)) if work.is_dir() else None
        if resume:
            self.log(f"{name}: resuming from {resume}")
        start = time.perf_counter()
        trainer = MultiTeacherDistillationTrainer(model=model, args=self.training_args(name, **kwargs),
                                                  train_dataset=dataset, processing_class=tokenizer or self.tokenizer)
        trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - start
        if resume:  # the time before the crash is not known (a checkpoint does not keep it): say so in the run
            self.resumed.append(name)
        shutil.rmtree(work, ignore_errors=True)
        return round(seconds, 1)

    def pool_run(self, row: str, pool: str, epochs: float, seed: int) -> None:
        from transformers import set_seed

        from tmkd_hf import MultiHeadStudent, student_from_teacher_layers

        subset, heads = ROW_RECIPES[row]
        s, seconds = self.settings, {}
        name = run_name(row, pool, epochs, self.lever)
        pool_set = self.pool_dataset(pool, subset)
        start = time.perf_counter()
        set_seed(seed)
        student = student_from_teacher_layers(self.backbone, layers=list(self.setting("student_layers")),
                                              **self.model_kwargs)
        num_heads = len(pool_set[0]["teacher_logits"]) if heads == "all" else 1
        student = MultiHeadStudent(student, num_heads=num_heads, readout=s["readout"])
        # stage 1 is soft only (alpha 1: the pool has no labels); the stage-2 alpha lever changes stage 2 alone
        seconds["stage1"] = self.train(f"{name}-seed{seed}-stage1", student, pool_set, seed=seed, alpha=1.0,
                                       learning_rate=s["stage1_learning_rate"], epochs=epochs)
        # what stage 1 alone gives (heads merged, as shipped): does stage 2 add to it or undo it? Evaluation draws no
        # random numbers and stage 2's Trainer seeds itself, so the final student is the one it was without this.
        stage1_metrics = self.evaluate(student.merge_heads())
        seconds["stage2"] = self.train(f"{name}-seed{seed}-stage2", student, self.train_sets[subset], seed=seed,
                                       alpha=self.setting("stage2_alpha"), learning_rate=s["stage2_learning_rate"],
                                       epochs=s["stage2_epochs"])
        model = student.merge_heads()
        parameters = int(sum(p.numel() for p in model.parameters()))
        t0 = time.perf_counter()
        metrics = self.evaluate(model)
        seconds["evaluation"] = round(time.perf_counter() - t0, 1)
        seconds["total"] = round(time.perf_counter() - start, 1)
        steps = math.ceil(len(pool_set) / s["batch_size"]) * epochs
        self.save_run(name, seed, metrics, seconds, base_row=row, pool=pool, stage1_rows=len(pool_set),
                      stage1_epochs=epochs, stage1_steps=round(steps), num_heads=num_heads,
                      stage2_rows=len(self.train_sets[subset]), student_parameters=parameters,
                      stage1_metrics=stage1_metrics, **self.lever.record(),
                      load=load_average(),
                      **({"resumed": [n for n in self.resumed if n.startswith(f"{name}-seed{seed}-")]}
                         if self.resumed else {}))
        self.log(f"{name} seed {seed}: " + ", ".join(f"{sp} acc {m['accuracy']:.4f}" for sp, m in metrics.items())
                 + f" ({seconds['total']} s; stage 1 {seconds['stage1']} s)")

    def evaluate(self, model) -> dict:
        """Validation and test metrics of a merged student."""
        return {sp: self.metrics(sp, self.pipeline.predict_logits(model, self.tokenizer, self.features[sp],
                                                                  self.settings["eval_batch_size"]))
                for sp in self.eval_splits}

    def peer_run(self, row: str, pool: str, epochs: float, seed: int) -> None:
        """The peer row: our student's layers as a sentence-transformers CrossEncoder, distilled by
        `CrossEncoderTrainer` + `MSELoss` to the 4 teachers' mean logit margin in the same two stages."""
        import peer_crossencoder as peer

        s = self.settings
        kind = PEER_ROWS[row]
        learning_rate = self.peer_learning_rate(kind)
        config = self.peer_config(kind, epochs, seed, layers=self.lever.student_layers, learning_rate=learning_rate)
        pool_rows = self.pool_rows(pool, "all")
        result = peer.run_peer(self.backbone, pool=pool_rows, train=self.labelled["train"],
                               eval_sets={sp: self.raw[sp] for sp in self.eval_splits},
                               text_columns=self.text_columns, config=config, out_dir=self.out / "peer",
                               name=f"{run_name(row, pool, epochs, self.lever)}__seed{seed}",
                               group_column=self.files["group_column"], log=self.log)
        steps = math.ceil(len(pool_rows) / s["batch_size"]) * epochs
        self.save_run(run_name(row, pool, epochs, self.lever), seed, result["metrics"], result["seconds"],
                      base_row=row, pool=pool, stage1_rows=len(pool_rows), stage1_epochs=epochs,
                      stage1_steps=round(steps), num_heads=0, stage2_rows=len(self.labelled["train"]),
                      peer_learning_rate=learning_rate, student_parameters=result["num_parameters"],
                      **self.lever.record(),
                      load=load_average())

    def peer_config(self, kind: str, epochs: float, seed: int, layers=None, **extra):
        """The peer's settings: our student's layers (`layers`, else the settings'), budgets and batches (the learning
        rate is its own)."""
        import peer_crossencoder as peer

        s = self.settings
        return peer.PeerConfig(kind=kind, layers=tuple(layers or s["student_layers"]), stage1_epochs=epochs,
                               stage2_epochs=s["stage2_epochs"], batch_size=s["batch_size"],
                               warmup_steps=s["warmup_steps"], weight_decay=s["weight_decay"],
                               max_length=s["max_length"], seed=seed, positive=self.label2id[ab.POSITIVE],
                               eval_batch_size=s["eval_batch_size"], **extra)

    def peer_learning_rate(self, kind: str) -> float:
        """`--peer-learning-rate`, else the one `--tune-peer` chose on validation (tuning_<kind>.json)."""
        if self.args.peer_learning_rate:
            return self.args.peer_learning_rate
        tuned = self.out / "peer" / f"tuning_{kind}.json"
        if not tuned.is_file():
            raise SystemExit(f"peer_{kind}: no learning rate; choose it on validation with --tune-peer first, or "
                             "give --peer-learning-rate")
        return json.loads(tuned.read_text())["learning_rate"]

    def tune_peer(self, kinds: list[str], pool: str, epochs: float, seed: int) -> None:
        """The peer's tuning budget: its learning rate chosen on validation accuracy (seed `seed`, `pool`)."""
        import peer_crossencoder as peer

        for kind in kinds:
            if (self.out / "peer" / f"tuning_{kind}.json").is_file():
                continue
            config = self.peer_config(kind, epochs, seed)
            chosen = peer.tune_peer(self.backbone, pool=self.pool_rows(pool, "all"), train=self.labelled["train"],
                                    eval_sets={sp: self.raw[sp] for sp in self.eval_splits},
                                    text_columns=self.text_columns, config=config, out_dir=self.out / "peer",
                                    learning_rates=self.args.peer_grid, group_column=self.files["group_column"],
                                    log=self.log)
            self.log(f"peer_{kind}: learning rate {chosen['learning_rate']:g} chosen on validation ({pool}, "
                     f"{epochs:g} stage-1 epoch(s), seed {seed})")

    def run_pools(self, rows: list[str], pools: list[str], epochs: list[float], seeds: list[int]) -> None:
        for pool in pools:
            for e in epochs:
                for seed in seeds:
                    for row in rows:
                        path = ab.run_file(self.out, run_name(row, pool, e, self.lever), seed)
                        if path.is_file():
                            self.log(f"skip {path.stem}: done")
                            continue
                        self.log(f"start {path.stem}")
                        (self.peer_run if row in PEER_ROWS else self.pool_run)(row, pool, e, seed)
                        self.newly_finished += 1
                        if self.args.stop_after and self.newly_finished >= self.args.stop_after:
                            raise ab.StopRequested(f"stopped after {self.newly_finished} new run(s) (--stop-after)")


# ----- the table and the picture, from the saved runs only -----


def run_lever(run: dict) -> Lever:
    """A run's lever, from the values it recorded (none: the default run, as every run made before the levers)."""
    return Lever.of({k: run.get(k) for k in LEVER_SETTINGS}, run["settings"])


def student_runs(out: Path) -> dict[tuple[str, Lever, str, float], list[dict]]:
    """The student runs by (base row, lever (`Lever()`: the settings' student), pool, stage-1 epochs)."""
    groups: dict[tuple[str, Lever, str, float], list[dict]] = {}
    for row_runs in ab.load_runs(out).values():
        for run in row_runs:
            if "pool" in run:
                key = (run["base_row"], run_lever(run), run["pool"], run["stage1_epochs"])
                groups.setdefault(key, []).append(run)
    return groups


def _acc(runs: list[dict], split: str = "test", key: str = "accuracy") -> list[float]:
    return [100 * r["metrics"][split][key] for r in sorted(runs, key=lambda r: r["seed"]) if split in r["metrics"]]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def _stage1_acc(runs: list[dict]) -> str:
    """Test accuracy of the stage-1 student (before stage 2), over the runs that recorded it (n shown if not all)."""
    acc = [100 * r["stage1_metrics"]["test"]["accuracy"] for r in runs if "test" in r.get("stage1_metrics", {})]
    if not acc:
        return "–"
    return _mean_std(acc) + (f" (n={len(acc)})" if len(acc) < len(runs) else "")


def _difference(a: list[float], b: list[float], b_fixed: bool = False) -> str:
    """Difference of means ± its standard error. A side of one seed has no variance estimate, so no SE is claimed
    (`b_fixed`: b is one deterministic number, e.g. an ensemble, and adds none)."""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or (len(b) < 2 and not b_fixed):
        return f"{diff:+.1f} (no SE: 1 seed)"
    se = math.sqrt(statistics.variance(a) / len(a) + (0.0 if b_fixed else statistics.variance(b) / len(b)))
    return f"{diff:+.1f} ± {se:.1f}"


def _pool_order(pool: str) -> tuple:
    match = POOL_PATTERN.match(pool)
    return (0, 0) if pool == "qnli" else (1, int(match["rows"])) if match["rows"] else (2, int(match["shards"]))


def build_table(out: Path) -> str:
    runs = ab.load_runs(out)
    groups = student_runs(out)
    if not runs:
        return f"No finished runs in {out / 'runs'}."
    settings = next(iter(runs.values()))[0]["settings"]
    lines = [f"Stage 1 on the pool named in each row, labelled by the teachers with {settings['pool_backend']}; "
             "stage 2 on qnli/train.tsv as bench_mpnet.py (its torch soft labels); student layers "
             f"{settings['student_layers']} of {settings['backbone']}, readout {settings['readout']}; stage 1 lr "
             f"{settings['stage1_learning_rate']:g}, stage 2 {settings['stage2_epochs']:g} epochs, lr "
             f"{settings['stage2_learning_rate']:g}, alpha {settings['alpha']:g}, T {settings['temperature']:g}, "
             f"batch {settings['batch_size']}. Pools: squadK = the first K shards of squad_pool (other articles); "
             "qnli = qnli/unlabeled.tsv (the evaluation articles); squad-nN = N pairs drawn from the first shard. "
             "Students: mean ± sample std over seeds."
             + (" A row marked '(layers …)' is the --student-layers lever: the student keeps those layers of the "
                "backbone instead." if any(k[1].student_layers for k in groups) else "")
             + (" A row marked 'T …', 'kl', 'soft_ce', 'mse' or 'alpha …' (in its parentheses) is the --temperature, "
                "--soft-loss or --stage2-alpha lever: both stages distil at that temperature or with that soft loss; "
                "stage 2 weighs the soft loss alpha and the labels 1 − alpha."
                if any(set(k[1].given()) & set(LOSS_LEVERS) for k in groups) else ""), "",
             "| row | pool | pool pairs | stage-1 epochs | stage-1 steps | runs (seeds) | validation acc | test acc | "
             "test MAP | test acc by seed | test acc after stage 1 | min per run |", "|" + "---|" * 12]
    refs = [r for r in ("majority", *sorted(r for r in runs if r.startswith("teacher_")), "ensemble_minilm",
                        "ensemble", "ensemble_weighted") if r in runs]
    names = {f"teacher_{i}": f"MiniLM-L6 teacher {i}" for i in range(mp.NUM_MINILM)}
    names[f"teacher_{mp.BIG}"] = "MPNet-base teacher"
    for ref in refs:
        r = runs[ref][0]["metrics"]
        lines.append(f"| {names.get(ref, ref)} | – | – | – | – | 1 | {100 * r['validation']['accuracy']:.1f} | "
                     f"{100 * r['test']['accuracy']:.1f} | "
                     + (f"{100 * r['test']['map']:.1f}" if "map" in r["test"] else "–") + " | – | – | – |")
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1].order(), _pool_order(kv[0][2]), kv[0][3]))
    for (row, lever, pool, epochs), g in order:
        seeds = sorted(r["seed"] for r in g)
        minutes = statistics.mean(r["seconds"]["total"] for r in g) / 60
        lines.append(f"| {row_label(row, lever)} | {pool} | {g[0]['stage1_rows']:,} | {epochs:g} | "
                     f"{g[0]['stage1_steps']:,} | {len(g)} ({', '.join(map(str, seeds))}) | "
                     f"{_mean_std(_acc(g, 'validation'))} | {_mean_std(_acc(g))} | "
                     f"{_mean_std(_acc(g, 'test', 'map'))} | {', '.join(f'{x:.1f}' for x in _acc(g))} | "
                     f"{_stage1_acc(g)} | {minutes:.0f}"
                     + (" (resumed: at least)" if any(r.get("resumed") for r in g) else "") + " |")
    # the comparisons the issue asks for, wherever both sides ran (each among students of the same lever)
    diffs = []
    keys = sorted({(p, e) for (_, _, p, e) in groups}, key=lambda k: (_pool_order(k[0]), k[1]))
    levers = sorted({lever for (_, lever, _, _) in groups}, key=Lever.order)
    for pool, e in keys:
        for lever in levers:
            a, b = groups.get(("TMKD_all", lever, pool, e)), groups.get(("TKD_mpnet", lever, pool, e))
            tmkd = row_label("TMKD_all", lever)
            if a and b:
                diffs.append(f"| {tmkd} − {row_label('TKD_mpnet', lever)} | {pool}, {e:g} epoch(s) | "
                             f"{_difference(_acc(a), _acc(b))} | {len(a)} | {len(b)} |")
            for peer_row in PEER_ROWS:
                q = groups.get((peer_row, lever, pool, e))
                if a and q:
                    diffs.append(f"| {tmkd} − {row_label(peer_row, lever)} | {pool}, {e:g} epoch(s) | "
                                 f"{_difference(_acc(a), _acc(q))} | {len(a)} | {len(q)} |")
            m = groups.get(("TMKD_minilm", lever, pool, e))
            if m and "ensemble_minilm" in runs:
                ens = [100 * runs["ensemble_minilm"][0]["metrics"]["test"]["accuracy"]]
                diffs.append(f"| {row_label('TMKD_minilm', lever)} − ensemble_minilm | {pool}, {e:g} epoch(s) | "
                             f"{_difference(_acc(m), ens, b_fixed=True)} | {len(m)} | 1 |")
        # each lever against the default student (the settings'), row by row
        for row in ALL_ROWS:
            base = groups.get((row, Lever(), pool, e))
            for lever in levers if base else ():
                moved = groups.get((row, lever, pool, e)) if lever else None
                if moved:
                    diffs.append(f"| {row_label(row, lever)} − {row} | {pool}, {e:g} epoch(s) | "
                                 f"{_difference(_acc(moved), _acc(base))} | {len(moved)} | {len(base)} |")
    for row in ALL_ROWS:
        for lever in levers:
            for e in sorted({k[1] for k in keys}):
                old = groups.get((row, lever, "qnli", e))
                for (r, lev, pool, e2), new in groups.items():
                    if r == row and lev == lever and e2 == e and pool.startswith("squad-n") and old:
                        diffs.append(f"| {row_label(row, lever)}: {pool} − qnli (control, equal size) | {e:g} "
                                     f"epoch(s) | {_difference(_acc(new), _acc(old))} | {len(new)} | {len(old)} |")
    if diffs:
        lines += ["", "Differences of mean test accuracy (points) ± standard error (sqrt(s_a^2/n_a + s_b^2/n_b)):", "",
                  "| a − b | where | difference | a runs | b runs |", "|---|---|---|---|---|", *diffs]
    bar = []
    for (row, lever, pool, e), g in groups.items():
        if row.startswith("TMKD") and len(g) >= 5:
            acc = _acc(g)
            ok = statistics.mean(acc) >= BAR and statistics.stdev(acc) <= 1.0
            bar.append(f"- {row_label(row, lever)} on {pool}, {e:g} epoch(s): {_mean_std(acc)} over {len(g)} seeds: "
                       f"{'meets' if ok else 'misses'} the bar ({BAR} test, std <= 1.0)"
                       + ("" if ok else f" by {BAR - statistics.mean(acc):.1f} points") + ".")
    if bar:
        lines += ["", *bar]
    labelling = out / "pool_labelling.json"
    if labelling.is_file():
        cost = json.loads(labelling.read_text())
        lines += ["", "Labelling the pool (seconds per file, as each file's cache recorded it when it was labelled):",
                  "", "| teachers | files | pairs | seconds | pairs/s | backend |", "|---|---|---|---|---|---|"]
        for group, files in cost.items():
            rows = sum(f["rows"] for f in files.values())
            secs = sum(f["seconds"] for f in files.values())
            backends = sorted({f["backend"] for f in files.values()})
            lines.append(f"| {group} ({len(GROUPS[group])}) | {len(files)} | {rows:,} | {secs:.0f} | "
                         f"{rows / secs:.0f} | {', '.join(backends)} |")
    return "\n".join(lines) + "\n"


def write_plot(out: Path) -> Path | None:
    """Test accuracy against stage-1 pool pairs (log x): each seed a dot, the mean per (row, pool) joined along the
    SQuAD pool, the old in-article pool as hollow markers; the MPNet teacher, the ensembles and the bar as lines.
    A lever row (`--student-layers`, `--temperature`, ...) has its base row's colour, with another marker and line
    style."""
    from tmkd_hf.plots import MatplotlibMissing, _figure, _save

    groups = student_runs(out)
    if not groups:
        return None
    try:
        figure = _figure(7.0, 4.5)
    except MatplotlibMissing as missing:
        print(f"[pool-scale] warning: {missing}", flush=True)
        return None
    runs = ab.load_runs(out)
    ax = figure.add_subplot()
    colours = {"TMKD_all": "tab:green", "TKD_mpnet": "tab:blue", "TMKD_minilm": "tab:orange", "peer_cls": "tab:grey",
               "peer_mean": "tab:purple"}
    lever_styles = ("s--", "^:", "D-.", "v--", "P:")  # the default student's line is "o-"
    levers = sorted({lever for (_, lever, _, _) in groups}, key=Lever.order)
    styles = {lever: lever_styles[(i - 1) % len(lever_styles)] if lever else "o-" for i, lever in enumerate(levers)}
    for row, colour in colours.items():
        by_epochs: dict[tuple, list] = {}
        for (r, lever, pool, e), g in groups.items():
            if r == row:
                by_epochs.setdefault((lever, e), []).append((pool, g))
        for (lever, e), items in by_epochs.items():
            style = styles[lever]
            line_x, line_y = [], []
            for pool, g in sorted(items, key=lambda it: it[1][0]["stage1_rows"]):
                x, acc = g[0]["stage1_rows"], _acc(g)
                hollow = pool == "qnli"
                ax.scatter([x] * len(acc), acc, s=14, color=colour, alpha=0.5, marker=style[0],
                           facecolors="none" if hollow else colour, zorder=3)
                if not hollow:
                    line_x.append(x)
                    line_y.append(statistics.mean(acc))
            if line_x:
                ax.plot(line_x, line_y, style, color=colour, zorder=4,
                        label=f"{row_label(row, lever)}, stage 1 {e:g} epoch(s), mean")
    for ref, style, label in ((f"teacher_{mp.BIG}", "--", "MPNet-base teacher"),
                              ("ensemble_minilm", ":", "MiniLM ensemble")):
        if ref in runs:
            ax.axhline(100 * runs[ref][0]["metrics"]["test"]["accuracy"], linestyle=style, color="grey", label=label)
    ax.axhline(BAR, linestyle="-.", color="tab:red", label=f"bar {BAR}")
    ax.set_xscale("log")
    ax.set_xlabel("stage-1 pool pairs (log; hollow: qnli/unlabeled.tsv, the evaluation articles)")
    ax.set_ylabel("QNLI test accuracy (%)")
    ax.set_title("TMKD stage 1 at scale: the SQuAD pool from other articles")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "pool_scale.png"
    _save(figure, [path])
    return path


def main(argv=None) -> int:
    from tmkd_hf.arguments import SOFT_LOSSES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", "--output-dir", default=str(ab.REPO / "outputs" / "pool-scale"))
    parser.add_argument("--teachers-from", "--teachers_from", type=Path, default=ab.REPO / "outputs" / "mpnet-qnli",
                        help="a bench_mpnet.py output_dir with its 4 trained teachers (bench_mpnet.py --teachers-only)")
    parser.add_argument("--pool-dir", "--pool_dir", default=str(DATA_ROOT / "squad_pool"))
    parser.add_argument("--labels-dir", "--labels_dir", default=str(DEFAULT_LABELS_DIR),
                        help="where the pools' soft labels are kept, per teacher group (per-file logits: commit them)")
    parser.add_argument("--pool-backend", "--pool_backend", default="onnx-int8-ffn-fp32",
                        help="how the teachers label the stage-1 pools (label_with_teachers(backend=...))")
    parser.add_argument("--pools", nargs="+", default=["squad1"], help="squadK, qnli, squad-nN (see above)")
    parser.add_argument("--stage1-epochs", "--stage1_epochs", dest="pool_stage1_epochs", type=float, nargs="+",
                        default=[1.0], help="stage 1's epochs (each value: its own runs)")
    parser.add_argument("--rows", nargs="+", default=list(ROW_RECIPES), choices=list(ALL_ROWS))
    parser.add_argument("--tune-peer", "--tune_peer", action="store_true",
                        help="choose each requested peer row's learning rate on validation (first pool and stage-1 "
                             "epochs, first seed) before the runs")
    parser.add_argument("--peer-grid", "--peer_grid", type=float, nargs="+", default=[5e-5, 1e-4, 2e-4, 4e-4])
    parser.add_argument("--peer-learning-rate", "--peer_learning_rate", type=float,
                        help="the peer rows' learning rate (default: what --tune-peer chose)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--student-layers", "--student_layers", dest="lever_student_layers", type=non_negative,
                        nargs="+", metavar="L", help="lever: the backbone layers the student keeps (e.g. 0 1 2 3 4 "
                        "5: the whole MiniLM-L6; default: the settings' student_layers); its runs are named and tabled "
                        "apart")
    parser.add_argument("--temperature", dest="lever_temperature", type=positive, metavar="T",
                        help="lever: the distillation temperature of both stages (> 0; default: the settings', 2); "
                        "our student rows only; its runs are named and tabled apart")
    parser.add_argument("--soft-loss", "--soft_loss", dest="lever_soft_loss", choices=SOFT_LOSSES,
                        help="lever: the soft loss of both stages (default: the settings', kl); our student rows "
                        "only; its runs are named and tabled apart")
    parser.add_argument("--stage2-alpha", "--stage2_alpha", dest="lever_stage2_alpha", type=weight, metavar="A",
                        help="lever: stage 2's weight of the soft loss, 1 - A on the labels (in [0, 1]; default: the "
                        "settings' alpha, 0.5; stage 1 stays soft only); our student rows only; named and tabled apart")
    parser.add_argument("--checkpoint-steps", type=int, default=1000,
                        help="save stage 1 every N steps (resumable); 0: never")
    parser.add_argument("--label-only", action="store_true",
                        help="label the pools for the --rows' teacher groups and stop (e.g. --rows TMKD_minilm: the "
                             "MiniLM group alone, before MPNet is trained)")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--max-train-rows", type=int, help="quick check: first N train rows")
    parser.add_argument("--max-eval-rows", type=int, help="quick check: first N validation/test rows")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="quick check: as the --teachers-from run was made (multiplies stage 2's epochs)")
    parser.add_argument("--backbone", help="the student's model dir (default: all-MiniLM-L6-v2)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stop-after", type=int, help="stop (exit code 3) after N newly finished runs")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the table to {RESULTS.name}")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    loss_levers = [option for lever, option in LOSS_LEVERS.items() if getattr(args, f"lever_{lever}") is not None]
    peers = [row for row in args.rows if row in PEER_ROWS]
    if loss_levers and peers:  # refused before anything runs
        parser.error(f"{', '.join(loss_levers)}: the peer row(s) {', '.join(peers)} have no temperature, soft loss or "
                     "alpha (a CrossEncoder with MSE on a margin); run the peers apart, without this lever")
    if args.table_only:
        table = build_table(out)
        print(table)
        if out.is_dir():
            (out / "pool_scale.md").write_text(table)
            write_plot(out)
        return 0
    num_shards = len(shard_files(Path(args.pool_dir)))
    try:
        args.pools = [check_pool(p, num_shards) for p in args.pools]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    teachers_from = Path(args.teachers_from)
    saved = teachers_from / "settings.json"
    if not saved.is_file():
        raise SystemExit(f"--teachers-from {teachers_from}: no settings.json (not a bench_mpnet.py output_dir)")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # bench_mpnet's settings, as its teachers and QNLI soft labels were made; stage 1's length is per run here
    theirs = json.loads(saved.read_text())
    args.rte, args.max_unlabeled_rows = False, theirs.get("max_unlabeled_rows")
    args.student_layers = args.batch_size = args.max_length = args.readout = None
    args.teacher_aggregation = "mean_logits"
    args.big_teacher_name = theirs["big_teacher"]
    args.big_teacher_epochs = theirs["big_teacher_epochs"] / args.epochs_scale  # settings_of scales it again
    args.big_teacher_learning_rate = theirs["big_teacher_learning_rate"]
    args.big_teacher_seed, args.big_teacher_readout = theirs["big_teacher_seed"], theirs["big_teacher_readout"]
    ours = mp.settings_of(args)
    different = {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours)
                 if theirs.get(k) != ours.get(k) and k != "stage1_epochs"}
    if different:
        raise SystemExit(f"--teachers-from {teachers_from}: made with other settings ({different}: theirs, here)")
    settings = {k: v for k, v in ours.items() if k not in ("stage1_epochs", "max_unlabeled_rows")}
    settings.update(pool_backend=args.pool_backend, teachers_from=str(teachers_from))
    ab.check_or_save_settings(out, settings)
    command = command_line(__file__, argv)
    started = time.perf_counter()
    bench = PoolScaleBench(args, out, teachers_from)
    bench.settings = settings
    # the levers: what differs from the settings (not in them, so the output_dir and its default runs are kept)
    bench.lever = Lever.of({lever: getattr(args, f"lever_{lever}") for lever in LEVER_SETTINGS}, settings)
    if bench.lever.student_layers:
        from transformers import AutoConfig

        depth = AutoConfig.from_pretrained(bench.backbone).num_hidden_layers
        layers = args.lever_student_layers
        if max(layers) >= depth or len(set(layers)) < len(layers):
            parser.error(f"--student-layers {layers}: distinct layers of the backbone's {depth} (0-based)")
    bench.log(f"output_dir {out}; teachers from {teachers_from}; pools {args.pools}; {torch.get_num_threads()} "
              f"torch threads; load {load_average()}" + (f"; lever: {bench.lever.label()}" if bench.lever else ""))
    if args.label_only:  # the pools only, for the requested rows' teacher groups (other teachers may not exist yet)
        subsets = sorted({ROW_RECIPES[r][0] if r in ROW_RECIPES else "all" for r in args.rows})
        bench.teacher_dirs = bench.teachers(tuple(sorted({g for sub in subsets for g in SUBSET_GROUPS[sub]})))
        for pool in args.pools:
            for subset in subsets:
                bench.pool_rows(pool, subset)
        return 0
    bench.label(bench.teachers())
    if args.tune_peer:
        bench.tune_peer([PEER_ROWS[r] for r in args.rows if r in PEER_ROWS], args.pools[0],
                        args.pool_stage1_epochs[0], args.seeds[0])
    try:
        bench.run_pools(args.rows, args.pools, args.pool_stage1_epochs, args.seeds)
    except ab.StopRequested as stop:
        bench.log(str(stop))
        return 3
    table = build_table(out)
    (out / "pool_scale.md").write_text(table)
    write_plot(out)
    bench.log(f"finished in {time.perf_counter() - started:.0f} s\n\n{table}")
    if not args.no_record:
        with RESULTS.open("a") as f:
            f.write("\n".join([f"## {time.strftime('%Y-%m-%d %H:%M %Z')} — stage 1 at scale (bench_pool_scale.py)",
                               "", f"- machine: {machine()}", f"- command: `{command}` (resumable: finished runs "
                               "reused)", f"- code: tmkd_hf at {code_version()}", "", table]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
