"""Tasks: where the data of a task comes from, which columns hold its text and labels, and how it is scored.

One place for what `run_glue.py` spreads over its `task_to_keys` table, its label handling and its metric loading:

- `TaskSpec` / `get_task`: the GLUE tasks, WikiQA, and your own csv/tsv/json/jsonl/parquet/`save_to_disk` data
  (`custom_task`); each spec knows its text columns (with the other names the same column has in other published
  formats: the GLUE TSV downloads, the WikiQA TSV, the Hub), its label names and their order, and its metrics.
- `load_rows`: one file, `save_to_disk` directory or Hub dataset as a `Dataset` (GLUE-style TSVs are read without
  quoting, because their sentences contain quote characters).
- `resolve_label_names` / `encode_labels`: the label space of a run, aligned with the model's `config.label2id` when
  it names its labels (a clear error naming both label sets when they differ), and the labels as ids.
- `build_compute_metrics`: a `compute_metrics` for `Trainer`. Online it uses `evaluate.load(...)`; offline (or when
  `evaluate.load` fails) a local implementation that gives the same keys and values (accuracy, f1,
  matthews_correlation, pearson, spearmanr, mse, and `combined_score` as `run_glue.py` adds it), plus per-question
  MAP and MRR for ranking tasks such as WikiQA.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset, load_from_disk
from transformers.utils import logging

from .teachers import has_named_labels, label_names

logger = logging.get_logger(__name__)

FILE_EXTENSIONS = ("csv", "tsv", "json", "jsonl", "parquet")
# The columns that hold golden labels, under the names `Trainer` and `DataCollatorWithPadding` accept.
LABEL_COLUMNS = ("label", "labels", "label_ids")
MetricSpec = tuple[str, str | None]  # (evaluate module, config name)


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its text and label columns, label names in id order, metrics and where its data lives.

    Args:
        name: the task name (`"qnli"`, `"wikiqa"`, or `"custom"` for your own files).
        text_columns: one column (single sentences) or two (sentence pairs), as the Hub dataset names them.
        label_column: the label column.
        label_names: label names in id order (the Hub `ClassLabel` order: integer labels of the task's data mean
            these names). `None`: taken from the model or the data (custom tasks) or regression.
        is_regression: one real-valued output (STS-B); the loss and metrics are for regression.
        metrics: `(evaluate module, config)` pairs; the local twins in `local_metric` give the same keys.
        group_column: rows of one question share this id; adds per-question `map` and `mrr` (ranking tasks).
        positive_label: the relevant class of a ranking task (its score ranks the candidates).
        hub_dataset: `(path, config)` for `datasets.load_dataset` when no local files are given.
        validation_splits, test_splits: split names (MNLI has a matched and a mismatched one of each).
        column_aliases: other names of a column in other published formats, e.g. the GLUE TSV downloads.
        card: keyword arguments for `Trainer.create_model_card` / `push_to_hub` describing the dataset.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None
    is_regression: bool = False
    metrics: tuple[MetricSpec, ...] = (("accuracy", None),)
    group_column: str | None = None
    positive_label: str | None = None
    hub_dataset: tuple[str, str | None] | None = None
    validation_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    column_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    card: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_ranking(self) -> bool:
        return self.group_column is not None

    def find_column(self, wanted: str, columns: Sequence[str]) -> str | None:
        """The name `wanted` has in `columns`: itself, or the first alias present (None when absent)."""
        for name in (wanted, *self.column_aliases.get(wanted, ())):
            if name in columns:
                return name
        return None

    def resolve_columns(self, columns: Sequence[str], what: str = "the data", need_label: bool = True):
        """`(text_columns, label_column, group_column)` as named in `columns`; a clear error when one is missing.

        The label column may be absent when `need_label` is false (e.g. a test split); it is then `None`.
        """
        text = [self.find_column(c, columns) for c in self.text_columns]
        label = self.find_column(self.label_column, columns)
        group = self.find_column(self.group_column, columns) if self.group_column else None
        missing = [c for c, found in zip(self.text_columns, text) if found is None]
        if need_label and label is None:
            missing.append(self.label_column)
        if self.group_column and group is None and need_label:
            missing.append(self.group_column)
        if missing:
            aliases = {c: list(self.column_aliases[c]) for c in missing if c in self.column_aliases}
            also = f" (also accepted: {aliases})" if aliases else ""
            raise ValueError(
                f"{what} has no column {missing}{also} for task {self.name!r}; its columns are {list(columns)}. "
                "Name the columns with --text_columns / --label_column (or rename them in the file)."
            )
        return text, label, group


def _glue(name, text_columns, label_names, metrics=None, **kwargs) -> TaskSpec:
    card = {"language": "en", "dataset_tags": "glue", "dataset_args": name, "dataset": f"GLUE {name.upper()}"}
    return TaskSpec(
        name=name,
        text_columns=text_columns,
        label_names=label_names,
        metrics=((("glue", name),) if metrics is None else metrics),
        hub_dataset=("nyu-mll/glue", name),
        card=card,
        **kwargs,
    )


GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable")),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive")),
    "mrpc": _glue(
        "mrpc",
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        column_aliases={"sentence1": ("#1 String",), "sentence2": ("#2 String",), "label": ("Quality",)},
    ),
    "qqp": _glue(
        "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), column_aliases={"label": ("is_duplicate",)}
    ),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), None, is_regression=True, column_aliases={"label": ("score",)}),
    "mnli": _glue(
        "mnli",
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        validation_splits=("validation_matched", "validation_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        column_aliases={"premise": ("sentence1",), "hypothesis": ("sentence2",), "label": ("gold_label",)},
    ),
    # entailment is the relevant class when a group_column makes these ranking tasks (QNLI: the sentences that answer
    # the question), not the second label
    "qnli": _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), positive_label="entailment"),
    "rte": _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), positive_label="entailment"),
    "wnli": _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), positive_label="entailment"),
}

WIKIQA = TaskSpec(
    name="wikiqa",
    # the published WikiQA TSV (QuestionID, Question, DocumentID, DocumentTitle, SentenceID, Sentence, Label);
    # the Hub's microsoft/wiki_qa names them question_id, question, answer, label
    text_columns=("Question", "Sentence"),
    label_column="Label",
    label_names=("0", "1"),
    metrics=(("accuracy", None), ("f1", None)),
    group_column="QuestionID",
    positive_label="1",
    hub_dataset=("microsoft/wiki_qa", None),
    column_aliases={
        "Question": ("question",),
        "Sentence": ("answer", "sentence"),
        "Label": ("label",),
        "QuestionID": ("question_id",),
    },
    card={"language": "en", "dataset_tags": "microsoft/wiki_qa", "dataset": "WikiQA"},
)

TASKS: dict[str, TaskSpec] = {**GLUE_TASKS, "wikiqa": WIKIQA}
_TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "wiki_qa": "wikiqa", "wiki-qa": "wikiqa"}


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` of a named task (case-insensitive; `sst-2`/`sts-b` spellings accepted)."""
    key = str(name).strip().lower()
    key = _TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"Unknown task {name!r}. Known tasks: {sorted(TASKS)}. For your own data leave task_name unset and give "
            "train_file / validation_file with --text_columns and --label_column."
        )
    return TASKS[key]


def custom_task(
    text_columns: Sequence[str],
    label_column: str = "label",
    is_regression: bool = False,
    group_column: str | None = None,
    positive_label: str | None = None,
) -> TaskSpec:
    """A task over your own files: metrics as `run_glue.py` picks them (accuracy, or mse for regression).

    With `group_column` (binary tasks), rows sharing a group id are ranked by the positive-class score and `f1`,
    `map` and `mrr` are added; `positive_label` names the relevant class (default: the second label, id 1).
    """
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name one or two columns, got {list(text_columns)}.")
    if is_regression and group_column:
        raise ValueError("group_column (MAP/MRR ranking) needs a classification task, not regression.")
    if is_regression:
        metrics: tuple[MetricSpec, ...] = (("mse", None),)
    elif group_column:
        metrics = (("accuracy", None), ("f1", None))
    else:
        metrics = (("accuracy", None),)
    return TaskSpec(
        name="custom",
        text_columns=text_columns,
        label_column=label_column,
        is_regression=is_regression,
        metrics=metrics,
        group_column=group_column,
        positive_label=positive_label,
    )


# ----- loading rows -----


def load_rows(
    path: str | os.PathLike,
    split: str = "train",
    config_name: str | None = None,
    max_rows: int | None = None,
    cache_dir: str | None = None,
    column_names: Sequence[str] | None = None,
) -> Dataset:
    """A `.csv/.tsv/.json/.jsonl/.parquet` file, a `save_to_disk` directory or a Hub dataset, as one `Dataset`.

    `.tsv` files are read as GLUE ships them: tab separated, no quoting (`csv.QUOTE_NONE`), because their sentences
    contain quote characters. Empty csv/tsv cells stay empty strings (never NaN). `split` picks the split of a
    saved `DatasetDict` or of a Hub dataset. `column_names` reads a headerless csv/tsv (the original CoLA TSVs:
    source, label, original label, sentence): its first line is data, not a header.
    """
    path = str(path)
    if column_names is not None and not (os.path.isfile(path) and path.lower().endswith((".csv", ".tsv"))):
        raise ValueError(f"column_names is for headerless .csv / .tsv files; {path} is not one.")
    if os.path.isdir(path):
        loaded = load_from_disk(path)
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path} holds the splits {list(loaded)}, not {split!r}.")
            loaded = loaded[split]
        dataset = loaded
    elif os.path.isfile(path):
        ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
        if ext in ("tsv", "csv"):
            kwargs: dict[str, Any] = {"keep_default_na": False}
            if column_names is not None:
                kwargs.update(column_names=list(column_names), header=None)
            if ext == "tsv":
                kwargs.update(delimiter="\t", quoting=3)
            dataset = load_dataset("csv", data_files=path, split="train", cache_dir=cache_dir, **kwargs)
        elif ext in ("json", "jsonl"):
            dataset = load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)
        elif ext == "parquet":
            dataset = load_dataset("parquet", data_files=path, split="train", cache_dir=cache_dir)
        else:
            raise ValueError(
                f"Unsupported file type {os.path.basename(path)!r}: use one of "
                f"{['.' + e for e in FILE_EXTENSIONS]} or a save_to_disk directory."
            )
    elif path.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS or path.startswith((".", os.sep)):
        raise FileNotFoundError(f"{path} does not exist (expected a data file or a save_to_disk directory).")
    else:
        try:
            dataset = load_dataset(path, config_name, split=split, cache_dir=cache_dir)
        except Exception as err:  # offline, unknown name, no such split: say what to do instead
            raise ValueError(
                f"Cannot load {path!r} (config {config_name!r}, split {split!r}): it is not a local file or directory "
                f"and loading it from the Hub failed ({type(err).__name__}: {err}). Offline (HF_DATASETS_OFFLINE=1), "
                "give local files instead."
            ) from err
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset


# ----- labels -----


def _is_missing(value) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def label_values(dataset: Dataset, label_column: str, task: TaskSpec | None = None) -> list[str | None]:
    """The labels of `dataset` as names (`None` for an unlabelled row).

    A `ClassLabel` column gives its names; integer labels of a named task (the Hub's GLUE/WikiQA order) mean the
    task's `label_names`; anything else is its text (`1` -> `"1"`). Negative ids of a `ClassLabel` or of a named
    task mark unlabelled rows (the GLUE test splits use -1).
    """
    feature = dataset.features.get(label_column)
    values = list(dataset[label_column])
    names = None
    if isinstance(feature, ClassLabel):
        names = feature.names
    elif task is not None and task.label_names is not None:
        names = task.label_names
    out: list[str | None] = []
    for v in values:
        if _is_missing(v):
            out.append(None)
        elif names is not None and isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            if v < 0:
                out.append(None)
            elif v >= len(names):
                raise ValueError(
                    f"Label id {v} is out of range for the label names {list(names)} of column {label_column!r}."
                )
            else:
                out.append(str(names[v]))
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return out


def _sort_key(name: str):
    try:
        return (0, float(name), name)  # numeric labels in numeric order: "2" before "10"
    except ValueError:
        return (1, 0.0, name)


def resolve_label_names(
    task: TaskSpec, data_labels: Iterable[str | None], model_config=None, use_model_labels: bool = True
) -> list[str]:
    """The label names of the run, in id order.

    - the model's `config.id2label` when it names its labels (not transformers' `LABEL_0`, `LABEL_1`, ...): the
      labels of the data must be among them (matched case-insensitively), else a `ValueError` names both sets;
    - otherwise the task's label order (GLUE, WikiQA);
    - otherwise the sorted names seen in the data (numbers in numeric order).
    """
    seen = sorted({str(v) for v in data_labels if v is not None}, key=_sort_key)
    if use_model_labels and model_config is not None and has_named_labels(model_config):
        names = label_names(model_config)
        known = {n.lower() for n in names}
        unknown = [v for v in seen if v.lower() not in known]
        if unknown:
            raise ValueError(
                f"The data's labels {seen} do not match the model's labels {names} (config.id2label): {unknown} "
                "are not among them. Use a model trained on this task's labels, give the labels by those names, or "
                "pass --ignore_mismatched_sizes to start a new classification head with the data's labels."
            )
        return names
    if task.label_names is not None:
        known = {n.lower() for n in task.label_names}
        unknown = [v for v in seen if v.lower() not in known]
        if unknown:
            raise ValueError(
                f"Labels {unknown} are not labels of task {task.name!r}, whose labels are {list(task.label_names)}."
            )
        return list(task.label_names)
    if not seen:
        raise ValueError("The data has no labels to build the label set from (every row is unlabelled).")
    return seen


def encode_labels(
    dataset: Dataset,
    label_column: str,
    label_list: Sequence[str] | None,
    task: TaskSpec | None = None,
    what: str = "the data",
    output_column: str = "label",
    allow_missing: bool = True,
) -> Dataset:
    """Replace `label_column` by an integer `output_column` of ids into `label_list` (float for regression).

    Unlabelled rows become -100 (NaN for regression): the trainer lets them learn from the teachers alone. A label
    outside `label_list` is an error naming the unseen labels and the label set. With `allow_missing=False` an
    unlabelled row is an error too (evaluation data must be fully labelled).
    """
    if label_list is None:  # regression
        raw = list(dataset[label_column])
        values = []
        for i, v in enumerate(raw):
            if _is_missing(v):
                values.append(float("nan"))
                continue
            try:
                values.append(float(v))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{what}: row {i} has the label {v!r} in column {label_column!r}, but this is a regression task "
                    "(numbers expected)."
                ) from None
        missing = [i for i, v in enumerate(values) if math.isnan(v)]
        dtype = "float32"
    else:
        ids = {name.lower(): i for i, name in enumerate(label_list)}
        names = label_values(dataset, label_column, task)
        unseen = sorted({n for n in names if n is not None and n.lower() not in ids}, key=_sort_key)
        if unseen:
            raise ValueError(
                f"{what} has labels {unseen} that are not in the label set {list(label_list)} (from the training data "
                "or the model). Every evaluation label must also be a training label; fix the file or the label "
                "column."
            )
        values = [-100 if n is None else ids[n.lower()] for n in names]
        missing = [i for i, v in enumerate(values) if v == -100]
        dtype = "int64"
    if missing and not allow_missing:
        raise ValueError(
            f"{what} has {len(missing)} row(s) without a label in column {label_column!r} (rows {missing[:10]}). "
            "Evaluation data must be labelled; drop those rows or use them as test data."
        )
    staged = "__tmkd_label__"  # added before the old column goes: a table never loses all its columns
    dataset = dataset.add_column(staged, values, feature=Value(dtype))
    dataset = dataset.remove_columns([c for c in {label_column, output_column} if c in dataset.column_names])
    return dataset.rename_column(staged, output_column)


# ----- metrics: local twins of evaluate's -----


def _accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float((predictions == references).mean())


def _f1(predictions: np.ndarray, references: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the positive class; 0.0 when there is nothing to score (scikit-learn's `zero_division`)."""
    tp = int(np.sum((predictions == positive) & (references == positive)))
    fp = int(np.sum((predictions == positive) & (references != positive)))
    fn = int(np.sum((predictions != positive) & (references == positive)))
    return 0.0 if 2 * tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))


def _matthews(predictions: np.ndarray, references: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K), 0.0 when undefined (as scikit-learn)."""
    classes, y = np.unique(np.concatenate([references, predictions]), return_inverse=True)
    n = len(references)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (y[:n], y[n:]), 1)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    samples, correct = confusion.sum(), np.trace(confusion)
    cov_ytyp = correct * samples - t_sum @ p_sum
    cov_ypyp = samples**2 - p_sum @ p_sum
    cov_ytyt = samples**2 - t_sum @ t_sum
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xm @ xm) * float(ym @ ym))
    if denom == 0:
        return float("nan")  # a constant input: correlation undefined (scipy warns and gives nan too)
    return float(np.clip((xm @ ym) / denom, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (`scipy.stats.rankdata(method="average")`)."""
    x = np.asarray(x)
    sorter = np.argsort(x, kind="mergesort")
    inverse = np.empty(sorter.size, dtype=np.intp)
    inverse[sorter] = np.arange(sorter.size)
    ordered = x[sorter]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = first.cumsum()[inverse]
    bounds = np.r_[np.nonzero(first)[0], len(first)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _pearson(_average_ranks(x), _average_ranks(y))


def local_metric(spec: MetricSpec, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """What `evaluate.load(*spec).compute(predictions=..., references=...)` returns, without a network."""
    module, config = spec
    predictions, references = np.asarray(predictions), np.asarray(references)
    if module == "glue":
        if config == "cola":
            return {"matthews_correlation": _matthews(predictions, references)}
        if config == "stsb":
            return {"pearson": _pearson(predictions, references), "spearmanr": _spearman(predictions, references)}
        if config in ("mrpc", "qqp"):
            return {"accuracy": _accuracy(predictions, references), "f1": _f1(predictions, references)}
        if config in ("sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans"):
            return {"accuracy": _accuracy(predictions, references)}
        raise ValueError(f"Unknown GLUE metric config {config!r}.")
    if module == "accuracy":
        return {"accuracy": _accuracy(predictions, references)}
    if module == "f1":
        return {"f1": _f1(predictions, references)}
    if module == "mse":
        diff = predictions.astype(np.float64) - references.astype(np.float64)
        return {"mse": float(np.mean(diff**2))}
    raise ValueError(f"No local implementation of the metric {spec}.")


def _offline() -> bool:
    truthy = {"1", "on", "yes", "true"}
    return any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))


def load_metric(task: TaskSpec) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """`(predictions, references) -> dict` for the task's metrics.

    Online: `evaluate.load(module, config)` for each of `task.metrics` (as `run_glue.py`). Offline (`HF_HUB_OFFLINE`
    or `HF_EVALUATE_OFFLINE` set), or when `evaluate.load` fails (with a warning): `local_metric`, same keys, same
    values.
    """

    def local(predictions, references):
        out: dict[str, float] = {}
        for spec in task.metrics:
            out.update(local_metric(spec, predictions, references))
        return out

    if _offline():
        return local
    try:
        import evaluate

        modules = [evaluate.load(module, config) for module, config in task.metrics]
    except Exception as err:  # no network, no cached module, missing dependency of the module
        logger.warning(
            f"evaluate.load failed for {list(task.metrics)} ({type(err).__name__}: {err}); using tmkd_hf's local "
            "implementation of the same metrics (same keys and values)."
        )
        return local

    def with_evaluate(predictions, references):
        out: dict[str, float] = {}
        for module in modules:
            out.update(module.compute(predictions=predictions, references=references))
        return out

    return with_evaluate


def _rows_by_group(groups: Sequence[Any]) -> list[np.ndarray]:
    """The row indices of each group id, groups in order of first appearance."""
    rows_of: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        rows_of.setdefault(g, []).append(i)
    return [np.asarray(rows) for rows in rows_of.values()]


def ranking_metrics(scores: np.ndarray, relevant: np.ndarray, groups: Sequence[Any]) -> dict[str, float]:
    """Per-group (per-question) mean average precision and mean reciprocal rank.

    Candidates of a group are ranked by `scores`, highest first; ties keep the rows' order. For a group with R
    relevant candidates at ranks r_1 < ... < r_R, AP = (1/R) sum_k k / r_k and RR = 1 / r_1. MAP and MRR are the
    means over groups. Groups with no relevant candidate are left out of both (the standard WikiQA convention,
    Yang et al., 2015: such questions have no answer to rank); with no group left both are NaN.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    relevant = np.asarray(relevant, dtype=bool).reshape(-1)
    if not len(scores) == len(relevant) == len(groups):
        raise ValueError(
            f"ranking_metrics got {len(scores)} scores, {len(relevant)} labels and {len(groups)} group ids; one of "
            "each per row is needed."
        )
    average_precisions, reciprocal_ranks = [], []
    for rows in _rows_by_group(groups):
        if not relevant[rows].any():
            continue
        ranked = relevant[rows][np.argsort(-scores[rows], kind="stable")]
        ranks = np.nonzero(ranked)[0] + 1  # 1-based ranks of the relevant candidates
        average_precisions.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        reciprocal_ranks.append(1.0 / ranks[0])
    if not average_precisions:
        return {"map": float("nan"), "mrr": float("nan")}
    return {"map": float(np.mean(average_precisions)), "mrr": float(np.mean(reciprocal_ranks))}


def expected_random_ap(candidates: int, relevant: int) -> float:
    """Exact expected average precision of a uniformly random ranking of `candidates` rows, `relevant` of them
    relevant (Bestgen, 2015, "Exact expected average precision of the random baseline for system evaluation").

    With n candidates and R relevant, the row at rank r is relevant with probability R/n and then has on average
    (r-1)(R-1)/(n-1) relevant rows above it, so E[AP] = (1/R) sum_r (R/n)(1 + (r-1)(R-1)/(n-1)) / r
    = (H_n + (R-1)/(n-1) (n - H_n)) / n, H_n the n-th harmonic number. One relevant in n: H_n / n.
    """
    n, r = int(candidates), int(relevant)
    if not 1 <= r <= n:
        raise ValueError(f"expected_random_ap needs 1 <= relevant <= candidates, got {relevant} of {candidates}.")
    harmonic = math.fsum(1.0 / k for k in range(1, n + 1))
    return 1.0 if n == 1 else (harmonic + (r - 1) / (n - 1) * (n - harmonic)) / n


def expected_random_rr(candidates: int, relevant: int) -> float:
    """Exact expected reciprocal rank of the first relevant row in a uniformly random ranking of `candidates` rows,
    `relevant` of them relevant: sum_k P(first relevant at rank k) / k, where P(first at k) is the chance that the
    k - 1 rows above are all irrelevant times R / (n - k + 1)."""
    n, r = int(candidates), int(relevant)
    if not 1 <= r <= n:
        raise ValueError(f"expected_random_rr needs 1 <= relevant <= candidates, got {relevant} of {candidates}.")
    expected, none_yet = 0.0, 1.0  # none_yet: probability that ranks 1 .. k-1 hold no relevant row
    for k in range(1, n - r + 2):
        expected += none_yet * r / (n - k + 1) / k
        none_yet *= (n - r - k + 1) / (n - k + 1)
    return expected


def random_ranking_metrics(relevant: np.ndarray, groups: Sequence[Any]) -> dict[str, float]:
    """The MAP and MRR a uniformly random ranking within each group scores on average: the chance level of
    `ranking_metrics` on these rows. Exact, per group from its number of candidates and of relevant ones
    (`expected_random_ap`, `expected_random_rr`), then averaged over groups the way `ranking_metrics` averages:
    groups with no relevant candidate left out, NaN when none is left."""
    relevant = np.asarray(relevant, dtype=bool).reshape(-1)
    if len(relevant) != len(groups):
        raise ValueError(f"random_ranking_metrics got {len(relevant)} labels and {len(groups)} group ids.")
    counts = [(len(rows), int(relevant[rows].sum())) for rows in _rows_by_group(groups)]
    counts = [(n, r) for n, r in counts if r > 0]
    if not counts:
        return {"map": float("nan"), "mrr": float("nan")}
    return {
        "map": float(np.mean([expected_random_ap(n, r) for n, r in counts])),
        "mrr": float(np.mean([expected_random_rr(n, r) for n, r in counts])),
    }


def build_compute_metrics(
    task: TaskSpec,
    label_list: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
) -> Callable:
    """A `compute_metrics(EvalPrediction) -> dict` for `Trainer`, as `run_glue.py` builds it.

    Predictions are the argmax of the logits (the output itself for regression); the task's metrics are computed
    (see `load_metric`) and, when there is more than one, their mean is added as `combined_score`. A ranking task
    is scored as relevant (1) / not relevant (0), so `f1` is the relevant class's, and also gets `map` and `mrr`
    over `groups` (one group id per evaluated row, in row order), ranking by the relevant label's log-probability.

    Args:
        task: the `TaskSpec`.
        label_list: the run's label names in id order (locates the positive label of a ranking task).
        groups: the group (question) id of every evaluated row; required by ranking tasks.
        metric: `(predictions, references) -> dict` to use instead of `load_metric(task)`.
    """
    metric = load_metric(task) if metric is None else metric
    positive = None
    if task.is_ranking:
        if groups is None:
            raise ValueError(f"Task {task.name!r} ranks candidates per {task.group_column}: pass groups=[...].")
        groups = list(groups)
        names = [n.lower() for n in (label_list or [])]
        if label_list is not None and len(names) != 2:
            raise ValueError(f"Ranking task {task.name!r} needs two labels (relevant or not), got {list(label_list)}.")
        wanted = (task.positive_label or "").lower()
        positive = names.index(wanted) if wanted in names else 1

    def compute_metrics(p) -> dict[str, float]:
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        logits = np.asarray(logits)
        references = np.asarray(p.label_ids)
        if task.is_regression:
            predictions = logits.reshape(-1)
            references = references.reshape(-1).astype(np.float64)
        else:
            predictions = logits.argmax(-1)
        if positive is None:
            result = dict(metric(predictions, references))
        else:  # scored as relevant (1) or not (0), whatever the id of the relevant label: f1 is the relevant class's
            result = dict(metric((predictions == positive).astype(np.int64), (references == positive).astype(np.int64)))
            if len(groups) != len(references):
                raise ValueError(
                    f"{len(references)} rows were evaluated but {len(groups)} group ids were given to "
                    "build_compute_metrics: build it for the dataset being evaluated."
                )
            scores = logits.astype(np.float64)
            top = scores.max(-1, keepdims=True)
            log_probs = scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))
            result.update(ranking_metrics(log_probs[:, positive], references == positive, groups))
        if len(result) > 1:
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    return compute_metrics
