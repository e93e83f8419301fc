"""`MultiTeacherDistillationTrainer`: a drop-in `Trainer` that learns from N teachers' soft labels.

Soft labels come from the batch (`teacher_logits`, cached once by `label_with_teachers`) or, for data without
a cache, from online teachers run on each batch. The `Trainer` methods overridden are: the loss
(`compute_loss`, `prediction_step`), keeping the `teacher_logits` column (`_set_signature_columns_if_needed`),
exact loss normalisation under gradient accumulation (`get_batch_samples`), per-component logging (`log`, `predict`),
evaluation in the rows' order under length-grouped training (`_get_eval_sampler`), the default objective of
`hyperparameter_search` and what gets saved (`_save`: checkpoints keep every head, the final
model is merged). What gets published (`push_to_hub`, `create_model_card`, `_push_from_checkpoint`) is in
`tmkd_hf.trainer_hub`.

With nothing to distil (`alpha=0`, no teachers) it is `Trainer`: a model whose loss `compute_loss` does not reproduce
(anything but a sequence classifier, or a `compute_loss_func`) is left to `Trainer` entirely. transformers' own Trainer
tests pass with it in `Trainer`'s place (`benchmarks/peer_trainer_tests.py`).
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import nested_detach
from transformers.trainer_utils import (
    PREFIX_CHECKPOINT_DIR,
    default_compute_objective,
    has_length,
    unwrap_peft_model,
)
from transformers.utils import logging

from .arguments import DistillationArguments, upgrade_arguments
from .collator import (
    TEACHER_LOGITS,
    DataCollatorWithTeacherLogits,
    check_finite_teacher_logits,
    stack_teacher_logits,
)
from .losses import label_mask, multi_teacher_distillation_loss, resolve_problem_type
from .model_card import StudentCardCallback, StudentCardData
from .modeling import MultiHeadStudent, find_classification_head
from .peft_student import is_peft_student, merge_student
from .readout import CONFIG_KEY, warn_if_nearly_constant
from .soft_label_cache import check_label_order, read_manifest, verify_rows
from .tasks import LABEL_COLUMNS
from .teachers import has_named_labels, label_names, label_permutation, load_teacher, teacher_forward
from .trainer_hub import TrainerHubMixin

logger = logging.get_logger(__name__)

READOUT_CHECK_ROWS = 64  # training rows the readout check runs the student on (once, at construction)


class MultiTeacherDistillationTrainer(TrainerHubMixin, Trainer):
    """`Trainer` for multi-teacher knowledge distillation (TMKD).

    Args:
        model: a [`MultiHeadStudent`] (head *i* learns from teacher *i*) or any plain sequence classifier (it learns
            from the teachers combined by `args.teacher_aggregation`): single-label, multi-label or regression, as its
            `config.problem_type` says.
        args: [`DistillationArguments`]. Other `TrainingArguments` (a script's own subclass too) are kept, the same
            object, and given the missing distillation fields with `args_class`'s defaults (`upgrade_arguments`).
        teachers: optional models or checkpoint paths run on every batch that has no cached `teacher_logits`.
            They must share the student's tokenizer; for other tokenizers cache logits with `label_with_teachers`.
        data_collator: defaults to [`DataCollatorWithTeacherLogits`] over `processing_class`.
        Everything else is passed to `transformers.Trainer` unchanged.
    """

    _tag_names = ["tmkd", "knowledge-distillation"]
    # `compute_loss` divides by the examples in the whole accumulated batch (see `get_batch_samples`); `None` (Trainer's
    # rule) on an instance that defers to `Trainer`.
    loss_is_scaled_for_ga = True
    args_class = DistillationArguments
    data_collator_class = DataCollatorWithTeacherLogits
    model_card_data_class = StudentCardData
    model_card_template_path: str | None = None  # None: model_cards/tmkd_student_card.md

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        teachers: list[str | nn.Module] | None = None,
        **kwargs,
    ):
        if not hasattr(Trainer, "loss_is_scaled_for_ga"):  # before 5.19 the loss would be divided by GA twice
            raise ImportError(
                f"MultiTeacherDistillationTrainer needs transformers >= 5.19 (found {transformers.__version__}): "
                "older Trainers do not honour loss_is_scaled_for_ga and would scale the loss of accumulated batches "
                "twice. pip install -U 'transformers>=5.19'."
            )
        if args is None:
            args = self.args_class(output_dir="trainer_output")
        args = upgrade_arguments(args, self.args_class)  # the same object: Trainer keeps the one it is given
        if data_collator is None and processing_class is not None and hasattr(processing_class, "pad"):
            data_collator = self.data_collator_class(processing_class)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if self.is_deepspeed_enabled:
            check_deepspeed_stage(getattr(self.accelerator.state, "deepspeed_plugin", None))
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._warned_regression_soft_loss = False
        # Model-card data gathered during the run (eval results, hyperparameters), rendered by `create_model_card`.
        self.model_card_data = self.model_card_data_class()
        # Filled by `log` and `predict` rather than registered: `callback_handler.callbacks` stays exactly Trainer's
        # (scripts and transformers' own tests inspect that list).
        self._card_recorder = StudentCardCallback(self.model_card_data)

        student = self._student()
        self.teachers, self._teacher_perms = self._prepare_teachers(teachers or [], student)
        # Nothing to distil and a loss `compute_loss` cannot reproduce (a model computing its own, `compute_loss_func`):
        # `Trainer`'s `compute_loss`, `prediction_step` and gradient accumulation, unchanged. Decided once, here.
        self.defers_to_trainer = (
            self.args.alpha == 0
            and not self.teachers
            and (self.compute_loss_func is not None or not is_sequence_classifier(student))
        )
        if self.defers_to_trainer:
            self.loss_is_scaled_for_ga = None  # Trainer's own rule for the model's loss
            return
        if self.compute_loss_func is not None:
            raise ValueError(
                "MultiTeacherDistillationTrainer computes the TMKD loss itself and would ignore compute_loss_func. "
                "Drop it (or use alpha=0.0 without teachers: plain fine-tuning with it), or subclass the trainer and "
                "override compute_loss (multi_teacher_distillation_loss in tmkd_hf.losses gives the per-example "
                "objective)."
            )
        # The loss is computed here, not by the model: never hand `num_items_in_batch` to `forward`.
        self.model_accepts_loss_kwargs = False
        if isinstance(student, MultiHeadStudent):
            if self.teachers and student.num_heads > 1 and len(self.teachers) != student.num_heads:
                raise ValueError(
                    f"{len(self.teachers)} online teachers were given but the student has {student.num_heads} heads."
                )
            if self.args.teacher_weights is not None and student.num_heads > 1:
                student.set_head_weights(self.args.normalized_teacher_weights(student.num_heads))
        elif self.teachers and self.args.teacher_weights is not None:
            self.args.normalized_teacher_weights(len(self.teachers))  # length check, clear error
        if hasattr(student, "add_model_tags"):
            student.add_model_tags(self._tag_names)
        if self.args.do_train or train_dataset is not None:
            self._check_train_dataset(train_dataset, student)
            self._check_readout(train_dataset, student)

    # ----- set-up helpers -----

    def _student(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _prepare_teachers(self, teachers, student) -> tuple[list[nn.Module], list]:
        loaded, perms = [], []
        if not teachers:
            return loaded, perms
        student_names = label_names(student.config) if getattr(student, "config", None) else None
        for i, spec in enumerate(teachers):
            name = spec if isinstance(spec, (str, os.PathLike)) else f"teachers[{i}] ({type(spec).__name__})"
            teacher = load_teacher(spec)
            for p in teacher.parameters():
                p.requires_grad_(False)
            student_vocab = getattr(student.config, "vocab_size", None)
            teacher_vocab = getattr(teacher.config, "vocab_size", None)
            if student_vocab and teacher_vocab and student_vocab != teacher_vocab:
                raise ValueError(
                    f"Online teacher {name!r} has a vocabulary of {teacher_vocab} tokens but the student has "
                    f"{student_vocab}: online teachers read the student's input_ids, so they must share its "
                    "tokenizer. Cache that teacher's logits with tmkd_hf.label_with_teachers instead."
                )
            perms.append(label_permutation(teacher.config, student_names, str(name), "the student"))
            loaded.append(teacher.to(self.args.device))
        return loaded, perms

    def _check_train_dataset(self, dataset, student) -> None:
        """Fail before training starts, with a fix, when the data cannot teach this student."""
        columns = getattr(dataset, "column_names", None)
        if not columns:
            return  # iterable / custom datasets are checked batch by batch in `compute_loss`
        if isinstance(columns, dict):  # DatasetDict
            return
        has_labels = any(c in columns for c in (*LABEL_COLUMNS, *self.label_names))
        if TEACHER_LOGITS not in columns and not self.teachers and self.args.alpha > 0:
            raise ValueError(
                f"train_dataset has no '{TEACHER_LOGITS}' column and no online teachers were given, but "
                f"alpha={self.args.alpha} asks for teacher soft labels. Label the data once with "
                "tmkd_hf.label_with_teachers(dataset, teachers, ...), pass teachers=[...] to the trainer, or set "
                "alpha=0.0 for plain fine-tuning."
            )
        if not has_labels and self.args.alpha < 1:
            raise ValueError(
                f"train_dataset has no label column but alpha={self.args.alpha} gives the golden-label loss a weight "
                f"of {1 - self.args.alpha:g}. For unlabelled data (TMKD stage 1) set alpha=1.0."
            )
        manifest = read_manifest(dataset) if isinstance(dataset, Dataset) else None
        if manifest is not None and TEACHER_LOGITS in columns:
            if _rows_are_checkable(dataset, manifest):
                verify_rows(dataset, manifest, "train_dataset")
            _check_label_order(manifest, student)
        if TEACHER_LOGITS in columns and len(dataset) > 0:
            # the collator's own checks (shape, ragged rows, NaN), so the first row fails as any batch would
            first = stack_teacher_logits([dataset[0][TEACHER_LOGITS]])[0]
            num_teachers, num_labels = first.shape
            # Reuse the loss's own shape checks on a dummy batch so the messages are identical.
            dummy_student = (
                torch.zeros(1, student.num_heads, student.config.num_labels)
                if isinstance(student, MultiHeadStudent) and student.num_heads > 1
                else torch.zeros(1, getattr(getattr(student, "config", None), "num_labels", num_labels))
            )
            weights = torch.tensor(self.args.normalized_teacher_weights(num_teachers))
            multi_teacher_distillation_loss(
                dummy_student,
                first.unsqueeze(0),
                None,
                teacher_weights=weights,
                soft_loss_kind=self.args.soft_loss,
                teacher_aggregation=self.args.teacher_aggregation,
                problem_type=getattr(getattr(student, "config", None), "problem_type", None),
            )

    def _check_readout(self, dataset, student) -> None:
        """Warn when the student reads out a state that is nearly constant across the first training rows (it would
        sit at chance first), or is a plain [CLS] model built from a backbone trained with mean pooling."""
        if getattr(getattr(student, "config", None), CONFIG_KEY, None) == "mean" and not isinstance(
            student, MultiHeadStudent
        ):
            logger.warning(
                "This plain student's backbone was trained with mean pooling (config.tmkd_readout='mean') but a plain "
                "transformers classifier reads out [CLS]. Wrap it to read out the mean: "
                "MultiHeadStudent(student, num_heads=<teachers, or 1>, readout='mean')."
            )
        tokenizer = self.processing_class
        if not isinstance(dataset, Dataset) or "input_ids" not in dataset.column_names or len(dataset) < 8:
            return
        if not hasattr(tokenizer, "pad") or not hasattr(student, "config"):
            return
        head = student.head if isinstance(student, MultiHeadStudent) else None
        if head is None:
            try:
                head = student.get_submodule(find_classification_head(student, student.config.num_labels))
            except (ValueError, AttributeError):
                return
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in dataset.column_names]
        rows = dataset.select(range(min(READOUT_CHECK_ROWS, len(dataset))))
        batch = tokenizer.pad([{k: row[k] for k in keys} for row in rows], return_tensors="pt")
        device = next(student.parameters()).device
        warn_if_nearly_constant(student, head, {k: v.to(device) for k, v in batch.items()}, "student")

    def _set_signature_columns_if_needed(self) -> None:
        """`Trainer` keeps only `forward`'s arguments: keep `teacher_logits` (and the wrapped model's inputs) too."""
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            student = self._student()
            if isinstance(student, MultiHeadStudent):
                self._signature_columns += list(inspect.signature(student.model.forward).parameters)
            self._signature_columns = list(dict.fromkeys(self._signature_columns + [TEACHER_LOGITS]))

    # ----- loss -----

    @torch.no_grad()
    def _online_teacher_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = []
        for teacher, perm in zip(self.teachers, self._teacher_perms):
            out = teacher_forward(teacher, inputs)
            logits.append(out[:, perm] if perm is not None else out)
        return torch.stack(logits, dim=1)

    def _label_key(self) -> str:
        """The golden-label column, as `Trainer` finds it: `args.label_names`, else the model's label argument."""
        if len(self.label_names) > 1:
            raise ValueError(
                f"label_names={self.label_names}: the distillation loss reads one label column per example. Keep one "
                "(e.g. label_names=['labels']), or train with alpha=0.0, no teachers and a model that computes its "
                "own loss from all of them."
            )
        return self.label_names[0] if self.label_names else "labels"

    def _num_supervised_rows(self, batch: dict[str, Any]) -> int:
        """The rows the loss learns from: every row when teacher logits supervise them (alpha > 0), else the labelled
        ones (a row labelled -100 has no loss at alpha 0: counting it would dilute the others, which Trainer does not
        do)."""
        labels = batch.get(self._label_key())
        if not torch.is_tensor(labels) or (self.args.alpha > 0 and (TEACHER_LOGITS in batch or bool(self.teachers))):
            return _num_rows(batch)
        config = getattr(self._student(), "config", None)
        problem_type = resolve_problem_type(
            getattr(config, "problem_type", None), getattr(config, "num_labels", None), labels
        )
        return int(label_mask(labels, problem_type).sum())

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """`Trainer` takes the model's own loss; this is TMKD's: `alpha * soft + (1 - alpha) * hard` per example,
        normalised by the rows it learns from in the accumulated batch (see `_num_supervised_rows`). When the trainer
        defers to `Trainer` (nothing to distil), `Trainer`'s."""
        if self.defers_to_trainer:
            inputs = {k: v for k, v in inputs.items() if k != TEACHER_LOGITS}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        teacher_logits = inputs.pop(TEACHER_LOGITS, None)
        labels = inputs.pop(self._label_key(), None)
        training = model.training
        if teacher_logits is None and self.teachers and self.args.alpha > 0:
            teacher_logits = self._online_teacher_logits(inputs)
        if training and self.args.alpha > 0 and teacher_logits is None:
            raise ValueError(
                f"The training batch has no '{TEACHER_LOGITS}' and no online teachers were given (alpha="
                f"{self.args.alpha}). Label the data with tmkd_hf.label_with_teachers, pass teachers=[...], or use "
                "alpha=0.0 for plain fine-tuning. If the column exists, your data collator dropped it: use "
                "DataCollatorWithTeacherLogits."
            )
        if training and self.args.alpha < 1 and labels is None:
            raise ValueError(
                f"The training batch has no labels but alpha={self.args.alpha} gives the golden-label loss a weight "
                f"of {1 - self.args.alpha:g}. For unlabelled data (TMKD stage 1) set alpha=1.0."
            )
        if teacher_logits is not None:
            teacher_logits = teacher_logits.to(self.args.device, dtype=torch.float32)
            check_finite_teacher_logits(teacher_logits)
            if self.args.alpha == 0 and labels is not None:
                teacher_logits = None  # plain fine-tuning: soft labels carry no weight

        outputs = model(**inputs)
        student_logits = model_logits(outputs)
        if student_logits.shape[-1] == 1 and self.args.soft_loss != "mse" and not self._warned_regression_soft_loss:
            logger.warning(f"Regression task: soft_loss={self.args.soft_loss!r} is replaced by MSE on the outputs.")
            self._warned_regression_soft_loss = True
        weights = None
        if teacher_logits is not None:
            weights = torch.tensor(self.args.normalized_teacher_weights(teacher_logits.shape[1]))
        problem_type = getattr(getattr(self._student(), "config", None), "problem_type", None)
        per_example, parts = multi_teacher_distillation_loss(
            student_logits,
            teacher_logits,
            labels,
            alpha=self.args.alpha,
            temperature=self.args.temperature,
            soft_loss_kind=self.args.soft_loss,
            t2_scaling=self.args.t2_scaling,
            teacher_weights=weights,
            teacher_aggregation=self.args.teacher_aggregation,
            label_smoothing=self.args.label_smoothing_factor,
            problem_type=problem_type,
        )
        if num_items_in_batch is not None:
            loss = per_example.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages gradients over processes
        elif teacher_logits is not None:
            loss = per_example.mean()
        else:  # labels only: the mean over the labelled rows, as the model's own loss would be
            problem_type = resolve_problem_type(problem_type, student_logits.shape[-1], labels)
            loss = per_example.sum() / label_mask(labels, problem_type).sum().clamp_min(1)
        mode = "train" if training else "eval"
        for key, value in parts.items():
            self._metrics[mode][key].append(value)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """`Trainer` counts label tokens, and only for a model's or `compute_loss_func`'s loss; count the rows of the
        whole accumulated batch that `compute_loss` learns from and divides by, so gradient accumulation is exact."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.defers_to_trainer or not batch_samples:
            return batch_samples, num_items
        count = sum(self._num_supervised_rows(b) for b in batch_samples)
        num_items = torch.tensor(count, device=device, dtype=torch.float32)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items.reshape(1)).sum()
        return batch_samples, num_items.clamp_min(1)  # no row to learn from: a zero loss, not 0 / 0

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """`Trainer`'s, with the TMKD loss: a batch with teacher logits and no labels is scored too, and a multi-head
        student's per-head logits are left out of the predictions (its combined `logits` and any other outputs, such
        as `hidden_states`, are returned as `Trainer` returns them)."""
        if self.defers_to_trainer:
            inputs = {k: v for k, v in inputs.items() if k != TEACHER_LOGITS}
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        label_key = self._label_key()
        labels = inputs.get(label_key)
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = [] if config is None else getattr(config, "keys_to_ignore_at_inference", ["cache"])
        can_score = labels is not None or TEACHER_LOGITS in inputs or bool(self.teachers)
        with torch.no_grad(), self.compute_loss_context_manager():
            if can_score:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach()
            else:
                loss, outputs = None, model(**{k: v for k, v in inputs.items() if k not in (TEACHER_LOGITS, label_key)})
        if prediction_loss_only:
            return loss, None, None
        if isinstance(outputs, dict):  # ModelOutput too; the model ran without labels, so it returned no loss
            logits = tuple(v for k, v in outputs.items() if k not in [*ignore_keys, "loss", "head_logits"])
        else:
            logits = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        logits = nested_detach(logits)
        return loss, logits[0] if len(logits) == 1 else logits, nested_detach(labels)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """`Trainer.predict`; its scores also go to the model card, and the loss parts it computed are dropped (it
        never logs them: they would mix into the next evaluation's)."""
        try:
            output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._metrics["eval"].clear()
        self._card_recorder.on_predict(self.args, self.state, self.control, metrics=output.metrics)
        return output

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation and prediction in the rows' order, also with `train_sampling_strategy="group_by_length"`
        (a training order): transformers 5 would group the evaluation batches by length as well and return the
        predictions and labels in that order, so that per-row results (predictions written beside their rows,
        MAP / MRR over each question's rows, agreement with the rows' cached teacher logits) would be paired with
        other rows. Accuracy is unaffected either way; batches may be padded more."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_eval_sampler(eval_dataset)
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def hyperparameter_search(self, hp_space=None, compute_objective=None, *args, **kwargs):
        """`Trainer.hyperparameter_search`. Its default objective (`eval_loss` without `compute_metrics`, else the
        sum of all metrics) would count the loss parts `evaluate` adds: `objective_without_loss_parts` leaves them
        out."""
        objective = compute_objective if compute_objective is not None else objective_without_loss_parts
        return super().hyperparameter_search(hp_space, objective, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer` logs the total loss only: add the mean soft/hard/per-teacher losses since the last log,
        averaged over processes. The model card records the hyperparameters, evaluation scores and training summary
        from the same logs."""
        is_train = "loss" in logs or "train_runtime" in logs
        mode = "train" if is_train else "eval"
        prefix = "" if is_train else next((k[: -len("loss")] for k in logs if k.endswith("_loss")), "eval_")
        if self._metrics[mode]:
            for key, values in self._metrics[mode].items():
                mean = torch.stack(values).mean().to(self.args.device).reshape(1)
                logs[f"{prefix}{key}"] = round(self.accelerator.gather(mean).mean().item(), 6)
            self._metrics[mode].clear()
        super().log(logs, start_time)
        if "train_runtime" in logs:  # the end of `train()`
            self._card_recorder.on_train_begin(self.args, self.state, self.control)
            self._card_recorder.on_train_end(self.args, self.state, self.control)
        elif any(k.endswith("_runtime") for k in logs):  # `evaluate()`'s metrics
            self._card_recorder.on_evaluate(self.args, self.state, self.control, metrics=logs)

    # ----- saving: checkpoints keep every head, the final model is merged -----

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """`Trainer` saves the model as it is; a multi-head (or LoRA) student is published merged, and only its
        training checkpoints (`checkpoint-<step>/`, to resume) keep every head (or the adapter)."""
        student = self._student()
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        checkpoint = is_checkpoint_dir(output_dir)
        lora_final = not checkpoint and is_peft_student(student)
        if not isinstance(student, MultiHeadStudent) and not lora_final:
            return super()._save(output_dir, state_dict)  # checkpoints of a PeftModel student: its adapter
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if lora_final and not isinstance(student, MultiHeadStudent):
            logger.info(f"Saving the merged LoRA student (adapters folded into the base weights) to {output_dir}")
            merge_student(student).save_pretrained(output_dir)
        elif checkpoint:
            student.save_pretrained(output_dir, state_dict=state_dict)
        elif state_dict is not None:
            # FSDP / DeepSpeed hand the full weights as `state_dict` (the module holds shards): merge those, through
            # the same multi-head checkpoint a resumed run would load
            logger.info(f"Saving the merged student ({student.num_heads} heads) from the gathered weights")
            with tempfile.TemporaryDirectory(prefix="tmkd-gathered-") as gathered:
                student.save_pretrained(gathered, state_dict=state_dict)
                MultiHeadStudent.from_pretrained(gathered).save_pretrained(output_dir, merged=True)
        else:
            logger.info(f"Saving the merged student ({student.num_heads} heads folded into one) to {output_dir}")
            student.save_pretrained(output_dir, merged=True)
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


def is_checkpoint_dir(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` is a training checkpoint, named as `Trainer._save_checkpoint` names them."""
    return re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", Path(output_dir).name) is not None


def check_deepspeed_stage(plugin) -> None:
    """ZeRO-3 partitions the parameters; merging the per-teacher heads and the readout check need them whole, and
    that path is untested: refuse it at init rather than save a wrong student at the end."""
    if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 is not supported by MultiTeacherDistillationTrainer: it partitions the student's "
            "parameters, which merging the per-teacher heads needs whole (untested). Use ZeRO stage 1 or 2, FSDP "
            "or DDP."
        )


def _check_label_order(manifest: dict, student) -> None:
    """Named labels must be in the same order in the cache and in the student, or logits and heads disagree."""
    config = getattr(student, "config", None)
    if config is not None and has_named_labels(config):
        check_label_order(manifest.get("label_names"), label_names(config), "the student's id2label is")


def _rows_are_checkable(dataset, manifest: dict) -> bool:
    """The cache's row fingerprint applies when the text is still there, in its original order and number."""
    return (
        all(c in dataset.column_names for c in manifest["text_columns"])
        and len(dataset) == manifest["num_rows"]
        and dataset._indices is None  # not shuffled / selected since labelling
    )


def is_sequence_classifier(model: nn.Module) -> bool:
    """Whether `compute_loss` reproduces `model`'s own loss: a [`MultiHeadStudent`] or a transformers
    `*ForSequenceClassification` (or a subclass, or under PEFT), whose loss is cross-entropy, BCE or MSE of its
    logits."""
    if isinstance(model, MultiHeadStudent):
        return True
    classifiers = set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values())
    return any(cls.__name__ in classifiers for cls in type(unwrap_peft_model(model)).__mro__)


def model_logits(outputs) -> torch.Tensor:
    """The logits to distil from a model's output, however it returns them: a multi-head student's `head_logits`
    (several heads), a `ModelOutput` or dict's `logits`, or the first item of a tuple (`return_dict=False`; the model
    ran without labels, so no loss comes first)."""
    if isinstance(outputs, dict):
        head_logits = outputs.get("head_logits")
        if head_logits is not None and head_logits.shape[1] > 1:
            return head_logits  # one head learns like a plain student: from the aggregated teachers
        if outputs.get("logits") is None:
            raise ValueError(
                f"The model returned {sorted(outputs.keys())} without 'logits': the distillation loss needs the "
                "classifier's logits."
            )
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    if torch.is_tensor(outputs):
        return outputs
    raise ValueError(f"Cannot find the logits in a model output of type {type(outputs).__name__}.")


_LOSS_PART = re.compile(r"(?:.*_)?loss_(?:soft|hard)(?:_teacher_\d+)?")


def objective_without_loss_parts(metrics: dict[str, float]) -> float:
    """`transformers`' `default_compute_objective` over the metrics without the TMKD loss parts that `evaluate`
    reports (`eval_loss_soft`, `eval_loss_hard`, `eval_loss_soft_teacher_<i>`): they are parts of `eval_loss`, not
    scores to add up."""
    return default_compute_objective({k: v for k, v in metrics.items() if not _LOSS_PART.fullmatch(k)})


def _num_rows(batch: dict[str, Any]) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("Cannot count the examples of a batch that holds no tensors.")
