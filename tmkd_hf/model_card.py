"""Model cards for distilled students: data gathered during the run, rendered from `model_cards/` with `ModelCard`.

Follows sentence-transformers' pattern: a small dataclass ([`StudentCardData`]) holds everything the card says, a
`TrainerCallback` ([`StudentCardCallback`]) fills in what only the run knows (evaluation results as they are
measured, non-default hyperparameters, the training summary), and [`write_model_card`] renders the template
(`model_cards/tmkd_student_card.md`, a Jinja2 file) with `huggingface_hub.ModelCard.from_template`. The YAML header
is a `ModelCardData` whose `model-index` holds this run's evaluation results as `EvalResult`s.

Numbers in the card come from the data, never from the template: a field that is `None` (or a metric that was not
measured) is left out of the card, not filled with a placeholder.

Outside a trainer (e.g. an end-to-end pipeline that evaluated teachers and timed the student itself):

```python
>>> from tmkd_hf.model_card import StudentCardData, TeacherInfo, SpeedMeasurement, write_model_card
>>> data = StudentCardData(
...     model_id="me/tmkd-minilm-qnli", base_model="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0",
...     dataset_id="nyu-mll/glue", dataset_config="qnli", dataset_name="GLUE QNLI",
...     eval_results={"validation": {"accuracy": 0.575}, "test": {"accuracy": 0.58}},
...     teachers=[TeacherInfo("me/teacher-0", metrics={"validation": {"accuracy": 0.801}})],
...     speed=SpeedMeasurement(student_examples_per_second=156.8, teacher_examples_per_second=79.2,
...                            hardware="2 CPU cores (shared), torch 2.13 CPU"),
... )
>>> card = write_model_card("outputs/student", data)   # writes outputs/student/README.md
```
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainerCallback

from .arguments import DISTILLATION_FIELDS, DistillationArguments
from .export import EXPORT_INFO_FILE, ONNX_SUBFOLDER
from .modeling import MultiHeadStudent
from .plots import ACCURACY_VS_SPEED_FILE
from .soft_label_cache import read_manifest

TEMPLATE_NAME = "tmkd_student_card.md"
# The card kinds (`StudentCardData.kind`) and their templates: a distilled task model, or a stage-1 student
# published with every head for others to continue with stage 2.
CARD_TEMPLATES = {"student": TEMPLATE_NAME, "stage1": "tmkd_stage1_card.md"}


def _default_template_path(name: str = TEMPLATE_NAME) -> Path:
    """`model_cards/` of the checkout (editable installs), else the copy a wheel installs under `share/tmkd_hf/`."""
    in_checkout = Path(__file__).resolve().parent.parent / "model_cards" / name
    installed = Path(sys.prefix) / "share" / "tmkd_hf" / "model_cards" / name
    return in_checkout if in_checkout.is_file() or not installed.is_file() else installed


DEFAULT_TEMPLATE_PATH = _default_template_path()
CARD_TAGS = ("knowledge-distillation", "tmkd")
STAGE1_TAG = "tmkd-stage1"
PAPER_URL = "https://arxiv.org/abs/1910.08381"
TMKD_CITATION = """@inproceedings{yang2020tmkd,
  title     = {Model Compression with Two-stage Multi-teacher Knowledge Distillation for Web Question Answering System},
  author    = {Yang, Ze and Shou, Linjun and Gong, Ming and Lin, Wutao and Jiang, Daxin},
  booktitle = {Proceedings of the 13th International Conference on Web Search and Data Mining (WSDM)},
  year      = {2020}
}"""

# Trainer metrics that describe the evaluation run, not the model: never in `model-index`.
_RUN_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")
# TrainingArguments fields that are bookkeeping (paths, logging, hub, hardware) or secret: never in the card. (The
# distillation fields, `DISTILLATION_FIELDS`, are shown in their own section instead of among the hyperparameters.)
_HIDDEN_ARGS = re.compile(
    r"^(output_dir|overwrite_output_dir|logging_.*|log_.*|run_name|report_to|disable_tqdm|push_to_hub.*|hub_.*|"
    r".*token.*|resume_from_checkpoint|do_train|do_eval|do_predict|local_rank|use_cpu|no_cuda|save_.*|"
    r"dataloader_.*|ddp_.*|fsdp.*|deepspeed|accelerator_config|tpu_.*|include_.*|label_names|eval_strategy|"
    r"eval_steps|eval_delay|remove_unused_columns|trackio_.*|project|debug|torch_compile.*|_n_gpu)$"
)
# How the distillation section names a field, where it says more than the field's name.
_DISTILLATION_LABELS = {"alpha": "alpha (weight of the teacher loss)"}
_PRETTY_METRICS = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "matthews_correlation": "Matthews correlation",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
    "mrr": "MRR",
    "map": "MAP",
    "auc": "AUC",
}
_SPLIT_ORDER = ("train", "validation", "test")


@dataclass
class TeacherInfo:
    """One teacher as the card shows it: where it comes from, and its scores when they were measured.

    Args:
        name_or_path: Hub id or local path (a local path is shown by its folder name, with its weights hash).
        revision: Hub revision the soft labels were computed with.
        adapter: PEFT adapter on top of `name_or_path`, if any.
        weights_sha256: content hash of local weights (from the labelling manifest).
        metrics: `{split: {metric: value}}`, e.g. `{"validation": {"accuracy": 0.801}}`, as measured.
        num_parameters: parameter count, when known.
        description: a short note ("6 layers, seed 1, lr 1e-4").
    """

    name_or_path: str
    revision: str | None = None
    adapter: str | None = None
    weights_sha256: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    num_parameters: int | None = None
    description: str | None = None

    @classmethod
    def from_manifest(cls, manifest: dict | None) -> list[TeacherInfo]:
        """The teachers recorded by `label_with_teachers` (see `tmkd_hf.read_manifest`), in teacher order."""
        teachers = []
        for record in (manifest or {}).get("teachers", []):
            teachers.append(
                cls(
                    name_or_path=str(record.get("name_or_path")),
                    revision=record.get("revision"),
                    adapter=record.get("adapter"),
                    weights_sha256=record.get("weights_sha256"),
                )
            )
        return teachers

    @property
    def display_name(self) -> str:
        name = _display(self.name_or_path)
        if self.adapter:
            name += f" + adapter {_display(self.adapter)}"
        return name

    @property
    def source(self) -> str:
        """Where to find it: a Hub revision, or the hash of local weights."""
        if _is_hub_id(self.name_or_path):
            return f"revision `{self.revision}`" if self.revision else "Hub (default revision)"
        return f"local, weights sha256 `{self.weights_sha256[:12]}`" if self.weights_sha256 else "local checkpoint"


@dataclass
class BaselineResult:
    """A comparison row of the results table that is neither this student nor a single teacher.

    For example the teachers' ensemble, the student after stage 1 only, or a labels-only student of the same size.
    """

    name: str
    description: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    num_parameters: int | None = None


@dataclass
class FormatSpeed:
    """One deployable form of the student (PyTorch fp32, ONNX fp32, ONNX int8, ...), timed in the same run as the
    teacher, so that the card can list every format measured side by side.

    `accuracy` is the format's own test accuracy (a fraction), measured on the same rows as the student's.
    """

    name: str
    examples_per_second: float
    runtime: str | None = None
    file: str | None = None
    size_bytes: int | None = None
    accuracy: float | None = None


@dataclass
class SpeedMeasurement:
    """Inference speed of the student against a teacher, measured on one machine in one run.

    `speedup` defaults to `student_examples_per_second / teacher_examples_per_second` when both are given.
    `hardware` says what it was measured on (CPU/GPU model, threads, whether the machine was shared).
    `formats` lists every exported form timed beside the teacher (the card shows them in one table, with their
    speed-up over the teacher and, given `ensemble_examples_per_second`, over the ensemble).
    """

    student_examples_per_second: float | None = None
    teacher_examples_per_second: float | None = None
    speedup: float | None = None
    teacher: str | None = None
    hardware: str | None = None
    batch_size: int | None = None
    num_examples: int | None = None
    notes: str | None = None
    ensemble_examples_per_second: float | None = None
    formats: list[FormatSpeed] = field(default_factory=list)

    def __post_init__(self):
        if self.speedup is None and self.student_examples_per_second and self.teacher_examples_per_second:
            self.speedup = self.student_examples_per_second / self.teacher_examples_per_second


@dataclass
class StudentCardData:
    """Everything a distilled student's model card says. Every field is optional; what is `None` is left out.

    Identity and metadata:
        model_id: the Hub repo id (`"me/tmkd-minilm-qnli"`), used in the usage snippet.
        model_name: the name in `model-index` (defaults to the last part of `model_id`).
        base_model: the student's initialisation, as a Hub id (metadata `base_model`).
        language, license: metadata; `tags` are added to `knowledge-distillation` and `tmkd`.
        pipeline_tag: `text-classification` (sequence-pair relevance / NLI are text classification on the Hub).
    Data:
        dataset_id / dataset_config / dataset_name / dataset_revision: the evaluation (and fine-tuning) dataset;
            `dataset_id` is a Hub dataset id, listed under `datasets`.
        train_datasets: free-form descriptions of what the student was trained on, e.g.
            `[{"name": "QNLI train slice", "rows": 1200, "stage": "stage 2"}]`.
        label_names: label order of the classifier.
    Results (as measured, `{split: {metric: value}}`):
        eval_results: this student's scores; they become the card's `model-index`.
        teachers: [`TeacherInfo`] in teacher order (head *i* learned from teacher *i*), with their scores.
        baselines: [`BaselineResult`] rows shown beside them (ensemble, stage-1-only student, labels-only student).
    Distillation and training:
        stage: what this run was (`"stage 1 + stage 2"`, `"stage 2: multi-teacher fine-tuning"`, ...).
        distillation: `alpha`, `temperature`, `soft_loss`, `t2_scaling`, `num_heads`, `teacher_weights`, ...
        hyperparameters: non-default training arguments. train_summary: steps, epochs, final training loss, runtime.
    Size and speed:
        num_parameters, num_layers, model_type, architecture: of the published (merged) student.
        readout: 'cls' (a plain transformers checkpoint) or 'mean' (a sentence-transformers `CrossEncoder`): what
            the export is and how the usage snippet loads it.
        speed: a [`SpeedMeasurement`].
    Free text: `summary` (one paragraph at the top) and `notes` (caveats, shown under the results).
    Kind:
        kind: `"student"` (a distilled task model: `model_cards/tmkd_student_card.md`) or `"stage1"` (a stage-1
            student published with every head, the starting point of stage 2: `model_cards/tmkd_stage1_card.md`,
            no `model-index`, since its scores are agreement with its teachers, not task results).
        num_heads, num_parameters_all_heads: the student's heads (one per teacher) and its parameters with every
            head (what a stage-1 repo's root holds; `num_parameters` counts the merged head once).
    """

    kind: str = "student"

    model_id: str | None = None
    model_name: str | None = None
    base_model: str | None = None
    language: str | list[str] | None = None
    license: str | None = None
    pipeline_tag: str = "text-classification"
    tags: list[str] = field(default_factory=list)

    dataset_id: str | None = None
    dataset_config: str | None = None
    dataset_name: str | None = None
    dataset_revision: str | None = None
    train_datasets: list[dict[str, Any]] = field(default_factory=list)
    label_names: list[str] | None = None

    eval_results: dict[str, dict[str, float]] = field(default_factory=dict)
    teachers: list[TeacherInfo] = field(default_factory=list)
    baselines: list[BaselineResult] = field(default_factory=list)

    stage: str | None = None
    distillation: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    train_summary: dict[str, Any] = field(default_factory=dict)

    num_parameters: int | None = None
    num_layers: int | None = None
    model_type: str | None = None
    architecture: str | None = None
    readout: str = "cls"
    speed: SpeedMeasurement | None = None

    summary: str | None = None
    notes: str | None = None

    num_heads: int | None = None
    num_parameters_all_heads: int | None = None

    def __post_init__(self):
        if self.kind not in CARD_TEMPLATES:
            raise ValueError(f"kind must be one of {sorted(CARD_TEMPLATES)}, got {self.kind!r}.")

    # ----- filling in from a run -----

    @classmethod
    def from_trainer(
        cls,
        trainer,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        **unknown,
    ) -> StudentCardData:
        """A copy of `trainer.model_card_data` (what [`StudentCardCallback`] gathered during the run, and what a
        script set on it) completed with what the trainer knows, and `Trainer.create_model_card`'s arguments
        (`finetuned_from` -> base model, `dataset_tags` / `dataset_args` / `dataset` -> dataset id, config and name,
        as `run_glue.py` passes them). A misspelt argument is an error, not a card without it."""
        if unknown:
            accepted = "language, license, tags, model_name, finetuned_from, tasks, dataset_tags, dataset, dataset_args"
            raise TypeError(
                f"create_model_card / push_to_hub got unknown argument(s) {sorted(unknown)}; the model card takes "
                f"{accepted} (and push_to_hub also commit_message, blocking, token, revision, private, "
                "replace_existing_model)."
            )
        data = dataclasses.replace(trainer.model_card_data)
        student = trainer.accelerator.unwrap_model(trainer.model)
        config = getattr(student, "config", None)
        args = trainer.args

        def first(value):
            return value[0] if isinstance(value, (list, tuple)) and value else value

        data.model_id = data.model_id or trainer.hub_model_id or args.hub_model_id
        data.model_name = model_name or data.model_name
        data.language = language or data.language
        data.license = license or data.license
        data.tags = list(dict.fromkeys([*data.tags, *([tags] if isinstance(tags, str) else tags or [])]))
        data.base_model = finetuned_from or data.base_model
        if isinstance(first(tasks), str) and first(tasks):
            data.pipeline_tag = first(tasks)
        data.dataset_id = first(dataset_tags) or data.dataset_id
        data.dataset_config = first(dataset_args) or data.dataset_config
        data.dataset_name = first(dataset) or data.dataset_name

        if config is not None:
            name_or_path = getattr(config, "_name_or_path", None)
            if data.base_model is None and _is_hub_id(name_or_path):
                data.base_model = name_or_path
            data.model_type = data.model_type or getattr(config, "model_type", None)
            data.num_layers = data.num_layers or next(
                (getattr(config, k) for k in ("num_hidden_layers", "n_layers", "num_layers") if hasattr(config, k)),
                None,
            )
            inner = student.model if isinstance(student, MultiHeadStudent) else student
            if isinstance(student, MultiHeadStudent) and student.readout == "mean":
                data.readout = "mean"
                data.architecture = data.architecture or (
                    f"CrossEncoder ({type(inner.base_model).__name__} + mean pooling + Dense)"
                )
            data.architecture = data.architecture or type(inner).__name__
            if data.label_names is None and getattr(config, "id2label", None):
                data.label_names = [str(config.id2label[i]) for i in range(config.num_labels)]
        if data.num_parameters is None:
            data.num_parameters = published_num_parameters(student)

        if isinstance(student, MultiHeadStudent):
            num_heads, weights = student.num_heads, [round(w, 6) for w in student.head_weights.tolist()]
            data.num_parameters_all_heads = data.num_parameters_all_heads or sum(
                p.numel() for p in student.parameters()
            )
        else:
            num_heads, weights = 1, None
        data.num_heads = data.num_heads or num_heads
        train_dataset = getattr(trainer, "train_dataset", None)
        if not data.teachers:
            manifest = read_manifest(train_dataset) if hasattr(train_dataset, "info") else None
            data.teachers = TeacherInfo.from_manifest(manifest)
            if not data.teachers and trainer.teachers:
                data.teachers = [
                    TeacherInfo(getattr(t.config, "_name_or_path", None) or f"online teacher {i}")
                    for i, t in enumerate(trainer.teachers)
                ]
        if not data.distillation and isinstance(args, DistillationArguments):
            num_teachers = len(data.teachers) or num_heads
            mse = args.soft_loss == "mse"  # no temperature: the logits are compared as they are
            shown = {
                "alpha": args.alpha,
                "soft_loss": args.soft_loss,
                "temperature": None if mse else args.temperature,
                "t2_scaling": None if mse else args.t2_scaling,
                "student heads": num_heads,
                "teacher_weights": weights
                or (args.normalized_teacher_weights(num_teachers) if num_teachers > 1 else None),
                "teacher_aggregation": args.teacher_aggregation if num_heads == 1 and num_teachers > 1 else None,
            }
            # every distillation field is shown here (and only here: `non_default_hyperparameters` leaves them out)
            shown.update({name: _plain(getattr(args, name)) for name in DISTILLATION_FIELDS if name not in shown})
            data.distillation = {_DISTILLATION_LABELS.get(k, k): v for k, v in shown.items()}
        if not data.train_datasets and train_dataset is not None and hasattr(train_dataset, "__len__"):
            info = getattr(train_dataset, "info", None)
            data.train_datasets = [
                {
                    "name": getattr(info, "dataset_name", None) or data.dataset_name or "train_dataset",
                    "config": getattr(info, "config_name", None),
                    "rows": len(train_dataset),
                    "teacher_logits": "cached (label_with_teachers)"
                    if "teacher_logits" in (getattr(train_dataset, "column_names", None) or [])
                    else None,
                }
            ]
        return data

    def add_eval_metrics(self, metrics: dict[str, float], split: str | None = None) -> None:
        """Record Trainer metrics (`{"eval_accuracy": 0.8, "eval_runtime": ...}`) under their split.

        The split comes from the metric prefix (`eval` -> `validation`, `eval_<name>` -> `<name>`, `test` and
        `predict` -> `test`) unless given. Run bookkeeping (runtime, throughput, epoch) and losses are not model
        scores and are skipped. A later evaluation of the same split replaces the earlier one.
        """
        prefix = _metric_prefix(metrics)
        split = split or _split_name(prefix)
        scores = {}
        for key, value in metrics.items():
            name = key[len(prefix) + 1 :] if prefix and key.startswith(prefix + "_") else key
            if name in _RUN_METRICS or name.startswith("loss") or not isinstance(value, (int, float)):
                continue
            scores[name] = float(value)
        if scores:
            self.eval_results[split] = scores

    def model_card_data(self) -> ModelCardData:
        """The YAML header: library, pipeline, tags, datasets, base model, licence, and `model-index`."""
        eval_results = [
            EvalResult(
                task_type=self.pipeline_tag,
                task_name=self.pipeline_tag.replace("-", " ").title(),
                dataset_type=self.dataset_id or "unknown",
                dataset_name=self.dataset_name or self.dataset_id or "Unknown",
                dataset_config=self.dataset_config,
                dataset_split=split,
                dataset_revision=self.dataset_revision,
                metric_type=metric,
                metric_name=_PRETTY_METRICS.get(metric, metric),
                metric_value=value,
            )
            for split, scores in _ordered_splits(self.eval_results)
            for metric, value in scores.items()
        ]
        if self.kind == "stage1":  # the root is a multi-head checkpoint (tmkd_hf), its scores no task's results
            return ModelCardData(
                language=self.language,
                license=self.license,
                tags=list(dict.fromkeys([*CARD_TAGS, STAGE1_TAG, *self.tags])),
                datasets=[self.dataset_id] if self.dataset_id else None,
                base_model=self.base_model if self.base_model and _is_hub_id(self.base_model) else None,
            )
        return ModelCardData(
            language=self.language,
            license=self.license,
            library_name="sentence-transformers" if self.readout == "mean" else "transformers",
            pipeline_tag=self.pipeline_tag,
            tags=list(dict.fromkeys([*CARD_TAGS, *self.tags])),
            datasets=[self.dataset_id] if self.dataset_id else None,
            base_model=self.base_model if self.base_model and _is_hub_id(self.base_model) else None,
            model_name=self.resolved_model_name if eval_results else None,
            eval_results=eval_results or None,
        )

    @property
    def resolved_model_name(self) -> str:
        return self.model_name or (self.model_id.split("/")[-1] if self.model_id else "tmkd-student")

    def template_kwargs(self) -> dict[str, Any]:
        """What the Jinja template reads: this data, plus tables and formatted values computed from it."""
        rows = [("**this model**", "student", self.num_parameters, self.eval_results)]
        rows += [(t.display_name, f"teacher {i}", t.num_parameters, t.metrics) for i, t in enumerate(self.teachers)]
        rows += [(b.name, b.description or "", b.num_parameters, b.metrics) for b in self.baselines]
        columns = []
        for _, _, _, metrics in rows:
            for split, scores in _ordered_splits(metrics):
                columns += [(split, m) for m in scores if (split, m) not in columns]
        columns.sort(key=lambda c: _split_rank(c[0]))
        results_table = None
        if columns and any(metrics for *_, metrics in rows):
            header = ["model", "role", "parameters"] + [f"{split} {_PRETTY_METRICS.get(m, m)}" for split, m in columns]
            body = [
                [name, role, _fmt_int(params)] + [_fmt(metrics.get(split, {}).get(m)) for split, m in columns]
                for name, role, params, metrics in rows
                if metrics or params
            ]
            results_table = _markdown_table(header, body)
        weights = self.distillation.get("teacher_weights")
        teacher_table = None
        if self.teachers:
            header = ["head", "teacher", "source", "weight", "note"]
            body = [
                [
                    str(i),
                    t.display_name,
                    t.source,
                    _fmt(weights[i]) if weights and i < len(weights) else "",
                    t.description or "",
                ]
                for i, t in enumerate(self.teachers)
            ]
            teacher_table = _markdown_table(header, body)
        speed = self.speed
        return {
            "card": self,
            "title": self.model_id or self.resolved_model_name,
            "usage_id": self.model_id or "path/to/this/folder",
            "results_table": results_table,
            "teacher_table": teacher_table,
            "distillation_items": [(k, _fmt_any(v)) for k, v in self.distillation.items() if v is not None],
            "hyperparameter_items": [(k, _fmt_any(v)) for k, v in sorted(self.hyperparameters.items())],
            "train_summary_items": [(k, _fmt_any(v)) for k, v in self.train_summary.items() if v is not None],
            "train_dataset_items": [
                ", ".join(f"{k}: {_fmt_any(v)}" for k, v in d.items() if v is not None) for d in self.train_datasets
            ],
            "num_parameters_text": _fmt_int(self.num_parameters),
            "num_parameters_all_heads_text": _fmt_int(self.num_parameters_all_heads),
            "stage2_command": self.stage2_command() if self.kind == "stage1" else None,
            "pool_rows": _fmt_any(sum(d["rows"] for d in self.train_datasets if isinstance(d.get("rows"), int)))
            if any(isinstance(d.get("rows"), int) for d in self.train_datasets)
            else None,
            "base_model_text": _display(self.base_model) if self.base_model else None,
            "speedup_text": f"{speed.speedup:.2f}x" if speed and speed.speedup else None,
            "speed": speed,
            "speed_items": _speed_items(speed),
            "formats_table": _formats_table(speed),
            "pretty_dataset": _pretty_dataset(self),
            "framework_versions": _framework_versions(),
            "citation": TMKD_CITATION,
            "paper_url": PAPER_URL,
        }

    def stage2_command(self) -> str:
        """The `run_glue_distill.py` command that continues every head of this (stage-1) student on a task: its
        teachers in head order (Hub ids at the recorded revision; a local teacher is a placeholder to replace)."""
        teachers = [
            (f"{t.name_or_path}@{t.revision}" if t.revision else t.name_or_path)
            if _is_hub_id(t.name_or_path) and not t.adapter
            else f"<teacher_{i}>"
            for i, t in enumerate(self.teachers)
        ] or [f"<teacher_{i}>" for i in range(self.num_heads or 1)]
        return (
            f"python recipes/run_glue_distill.py --model_name_or_path {self.model_id or 'path/to/this/folder'} \\\n"
            f"    --teachers {' '.join(teachers)} \\\n"
            "    --task_name <task> --train_file <train.tsv> --validation_file <validation.tsv> \\\n"
            "    --alpha 0.5 --do_train --do_eval --output_dir stage2"
        )


class StudentCardCallback(TrainerCallback):
    """Fills a [`StudentCardData`] as the run goes: non-default hyperparameters at `on_train_begin`, every
    evaluation / prediction's scores as they are measured, and the training summary at `on_train_end`."""

    def __init__(self, card_data: StudentCardData):
        self.card_data = card_data

    def on_train_begin(self, args, state, control, **kwargs):
        self.card_data.hyperparameters = non_default_hyperparameters(args)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.card_data.add_eval_metrics(metrics)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.card_data.add_eval_metrics(metrics)

    def on_train_end(self, args, state, control, **kwargs):
        last = next((log for log in reversed(state.log_history) if "train_loss" in log), {})
        summary = {
            "steps": state.global_step,
            "epochs": round(state.epoch, 2) if state.epoch is not None else None,
            "final training loss": last.get("train_loss"),
            "training runtime (s)": last.get("train_runtime"),
        }
        self.card_data.train_summary = {k: v for k, v in summary.items() if v is not None}


def non_default_hyperparameters(args) -> dict[str, Any]:
    """Training arguments that differ from their defaults, without paths, logging, hub settings or secrets."""
    out = {}
    for f in dataclasses.fields(args):
        if not f.init or _HIDDEN_ARGS.match(f.name) or f.name in DISTILLATION_FIELDS:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        value = getattr(args, f.name, None)
        if default is None and value in (False, "", [], {}):
            continue  # unset, then filled with an "off" value by __post_init__
        if _plain(value) != _plain(default):
            out[f.name] = _plain(value)
    return out


def published_num_parameters(model) -> int | None:
    """Parameters of the published model: a multi-head student counts its merged head once."""
    try:
        total = sum(p.numel() for p in model.parameters())
    except AttributeError:
        return None
    if isinstance(model, MultiHeadStudent):
        head = model.head
        per_head = head.in_features * head.out_features + (head.out_features if head.bias is not None else 0)
        total -= (model.num_heads - 1) * per_head
    return total


def render_model_card(
    card_data: StudentCardData,
    template_path: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
) -> ModelCard:
    """The card for `card_data`, rendered from `template_path` (default: the template of `card_data.kind`,
    `model_cards/tmkd_student_card.md` or `model_cards/tmkd_stage1_card.md`).

    Pictures found in `model_dir` (the folder the card is saved in and pushed with, e.g. `accuracy_vs_speed.png`)
    are embedded with relative links, so they show on the Hub once the folder is uploaded; an ONNX export in
    `model_dir/onnx/` (`tmkd_hf.export.export_onnx`) gets its files listed and an onnxruntime usage snippet.
    """
    if template_path is None:
        template_path = _default_template_path(CARD_TEMPLATES[card_data.kind])
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(
            f"Model card template {template_path} not found. tmkd_hf reads it from model_cards/ in a checkout, or "
            "from share/tmkd_hf/model_cards/ where a wheel installs it; pass template_path= to use your own."
        )
    found = {
        "accuracy_vs_speed_picture": ACCURACY_VS_SPEED_FILE
        if model_dir is not None and (Path(model_dir) / ACCURACY_VS_SPEED_FILE).is_file()
        else None,
        "onnx_export": _onnx_export_info(model_dir),
    }
    card = ModelCard.from_template(
        card_data.model_card_data(), template_path=str(template_path), **card_data.template_kwargs(), **found
    )
    # Sections that are left out leave blank lines behind: one blank line between blocks, one before headings.
    content = re.sub(r"\n{3,}", "\n\n", card.content)
    content = re.sub(r"(?<=[^\n])\n(?=#{1,6} )", "\n\n", content)
    return ModelCard(content)


def write_model_card(
    output_dir: str | os.PathLike, card_data: StudentCardData, template_path: str | os.PathLike | None = None
) -> ModelCard:
    """Render the card for `card_data` and save it as `output_dir/README.md` (beside the merged student); pictures
    already in `output_dir` are embedded."""
    card = render_model_card(card_data, template_path, model_dir=output_dir)
    os.makedirs(output_dir, exist_ok=True)
    card.save(os.path.join(output_dir, "README.md"))
    return card


# ----- helpers -----


def _is_hub_id(name: str | None) -> bool:
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")):
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None


def _display(name: str) -> str:
    if _is_hub_id(name):
        return f"[{name}](https://huggingface.co/{name})"
    return f"`{Path(name).name or name}`"


def _metric_prefix(metrics: dict[str, Any]) -> str:
    for key in metrics:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    first = next(iter(metrics), "")
    return first.split("_", 1)[0] if "_" in first else ""


def _split_name(prefix: str) -> str:
    if prefix in ("", "eval"):
        return "validation"
    if prefix == "predict":  # run_glue's `predict(test_dataset, metric_key_prefix="predict")`
        return "test"
    return prefix[len("eval_") :] if prefix.startswith("eval_") else prefix


def _split_rank(split: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def _ordered_splits(results: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    return sorted(results.items(), key=lambda item: _split_rank(item[0]))


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def _fmt_int(value) -> str | None:
    return f"{value:,}" if isinstance(value, int) else None


def _fmt_any(value) -> str:
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_any(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list[str | None]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell or "" for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _speed_items(speed: SpeedMeasurement | None) -> list[tuple[str, str]]:
    if speed is None:
        return []
    items = [
        (
            "student",
            f"{speed.student_examples_per_second:.4g} examples/s" if speed.student_examples_per_second else None,
        ),
        (
            f"teacher ({speed.teacher})" if speed.teacher else "teacher",
            f"{speed.teacher_examples_per_second:.4g} examples/s" if speed.teacher_examples_per_second else None,
        ),
        ("measured on", speed.hardware),
        ("batch size", _fmt_any(speed.batch_size) if speed.batch_size else None),
        ("examples", _fmt_any(speed.num_examples) if speed.num_examples else None),
        ("notes", speed.notes),
    ]
    return [(k, v) for k, v in items if v]


def _formats_table(speed: SpeedMeasurement | None) -> str | None:
    """Every format timed in the run: throughput, speed-ups over the teacher and the ensemble, size, accuracy."""
    if speed is None or not speed.formats:
        return None

    def ratio(value: float, base: float | None) -> str | None:
        return f"{value / base:.2f}x" if base else None

    header = [
        "format",
        "runtime",
        "file",
        "size (MB)",
        "examples/s",
        f"vs teacher{f' ({speed.teacher})' if speed.teacher else ''}",
        "vs ensemble",
        "test accuracy",
    ]
    body = [
        [
            f.name,
            f.runtime,
            f"`{f.file}`" if f.file else None,
            f"{f.size_bytes / 1e6:.1f}" if f.size_bytes else None,
            f"{f.examples_per_second:.4g}",
            ratio(f.examples_per_second, speed.teacher_examples_per_second),
            ratio(f.examples_per_second, speed.ensemble_examples_per_second),
            f"{100 * f.accuracy:.1f}" if f.accuracy is not None else None,
        ]
        for f in speed.formats
    ]
    keep = [i for i in range(len(header)) if i < 2 or i == 4 or any(row[i] for row in body)]  # no empty columns
    return _markdown_table([header[i] for i in keep], [[row[i] for i in keep] for row in body])


def _onnx_export_info(model_dir: str | os.PathLike | None) -> dict | None:
    """What `tmkd_hf.export.export_onnx` recorded in `model_dir/onnx/` (pushed with the model), for the card's
    ONNX usage snippet and file list; None without an export."""
    if model_dir is None:
        return None
    path = Path(model_dir) / ONNX_SUBFOLDER / EXPORT_INFO_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    files = [
        {
            "kind": kind,
            "path": f"{ONNX_SUBFOLDER}/{name}",
            "size_mb": f"{info['size_bytes'][kind] / 1e6:.1f}",
            "diff": f"{info['check']['max_abs_logit_diff_vs_torch'][kind]:.1e}",
            "what": "float32" if kind == "fp32" else _int8_weights(info.get("quantization") or {}),
        }
        for kind, name in info["files"].items()
    ]
    preferred = next((f for f in files if f["kind"] == "int8"), files[0])
    return {
        "dir": ONNX_SUBFOLDER,
        "files": files,
        "preferred": preferred["path"],
        "inputs": [i["name"] for i in info["inputs"]],
    }


def _int8_weights(quantization: dict) -> str:
    """How the card names an int8 file: its weights' type, and why when `weight_type="auto"` chose it."""
    kind = {"QInt8": "signed int8 weights", "QUInt8": "unsigned int8 weights"}.get(
        quantization.get("weight_type"), "int8 weights"
    )
    choice = quantization.get("weight_type_choice")
    if choice:
        diffs = choice["max_abs_logit_diff_vs_torch"]
        shown = ", ".join(f"{'signed' if k == 'QInt8' else 'unsigned'} {v:.1e}" for k, v in sorted(diffs.items()))
        kind += f", chosen by `weight_type=\"auto\"` on the export's CPU from the check batch's error ({shown})"
    return f"{kind} (onnxruntime dynamic quantization)"


def _pretty_dataset(data: StudentCardData) -> str | None:
    name = data.dataset_name or data.dataset_id
    if name is None:
        return None
    if data.dataset_id and _is_hub_id(data.dataset_id):
        name = f"[{name}](https://huggingface.co/datasets/{data.dataset_id})"
    return f"{name} (`{data.dataset_config}`)" if data.dataset_config else name


def _framework_versions() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    versions = [("tmkd_hf", __version__)]
    for package in ("transformers", "torch", "datasets", "huggingface_hub", "accelerate"):
        try:
            versions.append((package, version(package)))
        except PackageNotFoundError:
            pass
    return versions
