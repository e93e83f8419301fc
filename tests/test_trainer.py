"""MultiTeacherDistillationTrainer as a drop-in Trainer: the DESIGN.md API, GA exactness, eval, resume, errors."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import keyword_dataset, pair_dataset, tiny_model, tokenize
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, TrainingArguments

from tmkd_hf import (
    DataCollatorWithTeacherLogits,
    DistillationArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    label_with_teachers,
)
from tmkd_hf.modeling import STUDENT_CONFIG_NAME
from tmkd_hf.trainer import is_checkpoint_dir


def make_args(tmp_path, **overrides) -> DistillationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        num_train_epochs=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        logging_steps=2,
    )
    defaults.update(overrides)
    return DistillationArguments(**defaults)


def with_logits(dataset: Dataset, num_teachers: int = 3, num_labels: int = 2, seed: int = 0) -> Dataset:
    g = np.random.default_rng(seed)
    logits = g.normal(size=(len(dataset), num_teachers, num_labels)).astype(np.float32) * 2
    return dataset.add_column("teacher_logits", logits.tolist())


def no_dropout_student(num_heads: int = 3, num_labels: int = 2, seed: int = 0) -> MultiHeadStudent:
    model = tiny_model(
        "bert", num_labels=num_labels, seed=seed, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return MultiHeadStudent(model, num_heads)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


# ----- the public API, as written in DESIGN.md -----


def test_design_api_end_to_end(tmp_path, tokenizer, trained_teacher_dirs):
    raw_train, raw_dev = keyword_dataset(192, seed=2), keyword_dataset(64, seed=3)
    train = label_with_teachers(raw_train, trained_teacher_dirs, text_columns=("question", "sentence"))
    assert np.asarray(train[0]["teacher_logits"]).shape == (3, 2)
    train_tok, dev_tok = tokenize(train, tokenizer), tokenize(raw_dev, tokenizer)
    tiny_model("bert", seed=5).save_pretrained(tmp_path / "student-init")

    student = MultiHeadStudent.from_pretrained(str(tmp_path / "student-init"), num_teachers=3, num_labels=2)
    args = make_args(tmp_path, alpha=0.5, temperature=2.0, soft_loss="kl", num_train_epochs=2)
    trainer = MultiTeacherDistillationTrainer(
        model=student,
        args=args,
        train_dataset=train_tok,
        eval_dataset=dev_tok,
        processing_class=tokenizer,
        data_collator=DataCollatorWithTeacherLogits(tokenizer),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    trainer.save_model()

    out = tmp_path / "out"
    assert (out / "config.json").exists() and not (out / STUDENT_CONFIG_NAME).exists()
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = tokenizer(["what city"], ["the river of the king"], return_tensors="pt")
    student.eval()
    with torch.no_grad():
        diff = (plain(**batch).logits - student(**batch).logits).abs().max().item()
    assert diff <= 1e-5
    # per-component losses are logged
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"loss_soft", "loss_hard", "loss_soft_teacher_0", "loss_soft_teacher_2"} <= logged
    assert "eval_loss_hard" in metrics and "eval_loss_soft" not in metrics  # dev set has no cached logits


def test_student_agreement_with_teachers_rises(tmp_path, tokenizer, trained_teacher_dirs):
    """Stage-1 style distillation (no labels, alpha=1): the student learns the teachers' function."""
    train = label_with_teachers(keyword_dataset(384, seed=4, with_labels=False), trained_teacher_dirs)
    held_out = label_with_teachers(keyword_dataset(128, seed=5, with_labels=False), trained_teacher_dirs)
    teacher_vote = np.asarray(held_out["teacher_logits"]).mean(1).argmax(-1)
    assert 0.2 < teacher_vote.mean() < 0.8  # the teachers' predictions depend on the input
    student = MultiHeadStudent(tiny_model("bert", seed=21), 3)
    args = make_args(tmp_path, alpha=1.0, num_train_epochs=6, learning_rate=2e-3, per_device_train_batch_size=32)
    trainer = MultiTeacherDistillationTrainer(
        model=student, args=args, train_dataset=tokenize(train, tokenizer), processing_class=tokenizer
    )
    held_tok = tokenize(held_out, tokenizer)

    def agreement() -> float:
        return float((trainer.predict(held_tok).predictions.argmax(-1) == teacher_vote).mean())

    before = agreement()
    trainer.train()
    after = agreement()
    assert after >= 0.9, (before, after)
    assert after - before >= 0.25, (before, after)


# ----- drop-in behaviour -----


def test_default_remove_unused_columns_keeps_teacher_logits(tmp_path, tokenizer):
    raw = with_logits(pair_dataset(32))  # keeps the raw text columns: Trainer must drop them, not teacher_logits
    ds = raw.map(lambda b: tokenizer(b["question"], b["sentence"]), batched=True)
    args = make_args(tmp_path, alpha=1.0)
    assert args.remove_unused_columns is True
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=ds, processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "teacher_logits" in batch and "question" not in batch
    assert batch["teacher_logits"].shape == (8, 3, 2) and batch["teacher_logits"].dtype == torch.float32
    trainer.train()
    assert any("loss_soft" in entry for entry in trainer.state.log_history)


def test_plain_training_arguments_are_upgraded(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16)), tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=ds, processing_class=tokenizer
    )
    assert isinstance(trainer.args, DistillationArguments) and trainer.args.max_steps == 1
    assert trainer.args.alpha == 0.5
    trainer.train()


def _train_params(tmp_path, ds, tokenizer, name, **overrides):
    args = make_args(tmp_path / name, train_sampling_strategy="sequential", logging_steps=1, **overrides)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    return params(trainer.model), trainer


@pytest.mark.parametrize("rows", [16, 10])  # 10 rows: the accumulated micro-batches are 4, 4 and 2 rows
def test_gradient_accumulation_is_exact(tmp_path, tokenizer, rows):
    """Plain SGD (AdamW would hide a uniform loss-scale error, e.g. the loss divided by the accumulation steps a
    second time): the same parameters and the same logged losses as one full batch."""
    ds = tokenize(with_logits(pair_dataset(rows)), tokenizer)
    full = rows if rows % 4 else 8
    one_batch, full_trainer = _train_params(
        tmp_path,
        ds,
        tokenizer,
        "full",
        per_device_train_batch_size=full,
        gradient_accumulation_steps=1,
        num_train_epochs=2,
        optim="sgd",
        learning_rate=0.5,
    )
    accumulated, ga_trainer = _train_params(
        tmp_path,
        ds,
        tokenizer,
        "ga",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=full // 4 + (1 if full % 4 else 0),
        num_train_epochs=2,
        optim="sgd",
        learning_rate=0.5,
    )
    assert_same_params(one_batch, accumulated, atol=2e-6)
    moved = max((one_batch[k] - v).abs().max().item() for k, v in params(no_dropout_student()).items())
    assert moved > 1e-3  # SGD moved the weights: a loss scaled by 1/steps would have moved them less

    def logged(trainer):
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    assert len(logged(full_trainer)) == len(logged(ga_trainer)) > 1
    np.testing.assert_allclose(logged(ga_trainer), logged(full_trainer), rtol=1e-4)


def test_gradient_accumulation_catches_a_uniform_loss_scale_error(tmp_path, tokenizer, monkeypatch):
    """The test above can fail: the loss divided by the accumulation steps once more (what an older Trainer
    without `loss_is_scaled_for_ga` would do) changes the SGD parameters."""
    ds = tokenize(with_logits(pair_dataset(8)), tokenizer)
    kwargs = dict(num_train_epochs=1, optim="sgd", learning_rate=0.5)
    exact, _ = _train_params(tmp_path, ds, tokenizer, "exact", per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, **kwargs)
    real = MultiTeacherDistillationTrainer.compute_loss

    def halved(self, *args, **kw):
        loss = real(self, *args, **kw)
        return loss / self.args.gradient_accumulation_steps

    monkeypatch.setattr(MultiTeacherDistillationTrainer, "compute_loss", halved)
    scaled, _ = _train_params(tmp_path, ds, tokenizer, "scaled", per_device_train_batch_size=4,
                              gradient_accumulation_steps=2, **kwargs)
    with pytest.raises(AssertionError):
        assert_same_params(exact, scaled, atol=2e-6)


def test_an_older_trainer_without_exact_loss_scaling_is_refused(tmp_path, tokenizer, monkeypatch):
    import transformers

    monkeypatch.delattr(transformers.Trainer, "loss_is_scaled_for_ga")
    with pytest.raises(ImportError, match=r"transformers >= 5\.19"):
        MultiTeacherDistillationTrainer(model=no_dropout_student(), args=make_args(tmp_path),
                                        processing_class=tokenizer)


def test_evaluate_and_predict_return_combined_logits(tmp_path, tokenizer):
    train = tokenize(with_logits(pair_dataset(32)), tokenizer)
    dev = tokenize(pair_dataset(20, seed=1), tokenizer)  # labels, no teacher logits: hard loss only
    seen = {}

    def compute_metrics(pred):
        seen["shape"] = pred.predictions.shape
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(),
        args=make_args(tmp_path),
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert seen["shape"] == (20, 2) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert "eval_loss_hard" in metrics and "eval_loss_soft" not in metrics
    unlabelled = dev.remove_columns("label")
    pred = trainer.predict(unlabelled)
    assert pred.predictions.shape == (20, 2) and pred.label_ids is None
    # the predictions are the student's combined logits
    student = trainer.model.eval()
    batch = DataCollatorWithTeacherLogits(tokenizer)([unlabelled[i] for i in range(4)])
    with torch.no_grad():
        expected = student(**batch).logits.numpy()
    np.testing.assert_allclose(pred.predictions[:4], expected, atol=1e-5)


def test_length_grouped_training_still_evaluates_and_predicts_in_row_order(tmp_path, tokenizer):
    """transformers 5 groups evaluation batches by length under group_by_length and returns predictions and labels in
    that order; ours keep the rows' order (predictions written beside their rows, MAP / MRR per question group)."""
    dev = tokenize(pair_dataset(40, seed=3), tokenizer)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(),
        args=make_args(tmp_path, train_sampling_strategy="group_by_length", per_device_eval_batch_size=4),
        processing_class=tokenizer,
    )
    lengths = [len(ids) for ids in dev["input_ids"]]
    assert len(set(lengths)) > 4  # rows of many lengths: a grouped order would differ from the rows'
    pred = trainer.predict(dev)
    np.testing.assert_array_equal(pred.label_ids, np.asarray(dev["label"]))
    student = trainer.model.eval()
    with torch.no_grad():
        expected = np.concatenate(
            [student(**DataCollatorWithTeacherLogits(tokenizer)([dev[i]])).logits.numpy() for i in range(len(dev))]
        )
    np.testing.assert_allclose(pred.predictions, expected, atol=1e-5)


def test_evaluate_after_predict_logs_its_own_loss_parts_only(tmp_path, tokenizer):
    """`predict` runs the loss (soft parts too, on rows with teacher logits) but never logs its parts: the
    evaluation after it logs its own only."""
    with_teachers = tokenize(with_logits(pair_dataset(16)), tokenizer)
    dev = tokenize(pair_dataset(16, seed=1), tokenizer)  # labels, no teacher logits: hard loss only
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=make_args(tmp_path), processing_class=tokenizer
    )
    trainer.predict(with_teachers)
    metrics = trainer.evaluate(dev)
    assert "eval_loss_hard" in metrics and "eval_loss_soft" not in metrics


def test_only_folders_named_as_training_checkpoints_keep_every_head():
    assert is_checkpoint_dir("out/checkpoint-12") and is_checkpoint_dir("out/run-3/checkpoint-0/")
    for final in ("out", "out/checkpoint", "out/checkpoint-best", "checkpoint-12/merged"):
        assert not is_checkpoint_dir(final), final


def test_resume_from_checkpoint_continues_exactly(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(48)), tokenizer)
    common = dict(max_steps=6, per_device_train_batch_size=8, save_strategy="steps", save_steps=3)
    straight, _ = _train_params(tmp_path, ds, tokenizer, "straight", **common)

    args = make_args(tmp_path / "resumed", train_sampling_strategy="sequential", **common)
    first = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=ds, processing_class=tokenizer
    )
    first.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-3"
    assert (checkpoint / STUDENT_CONFIG_NAME).exists()  # training checkpoints keep every head
    assert MultiHeadStudent.from_pretrained(checkpoint).num_heads == 3

    second = MultiTeacherDistillationTrainer(
        model=no_dropout_student(seed=99), args=args, train_dataset=ds, processing_class=tokenizer
    )
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.state.global_step == 6
    assert_same_params(straight, params(second.model), atol=1e-6)


def test_single_head_student_learns_from_averaged_teachers(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(64), num_teachers=3), tokenizer)
    model = tiny_model("bert", seed=1)
    for aggregation in ("mean_logits", "mean_probs"):
        args = make_args(tmp_path / aggregation, alpha=1.0, teacher_aggregation=aggregation, num_train_epochs=3)
        trainer = MultiTeacherDistillationTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        trainer.train()
        losses = [e["loss_soft"] for e in trainer.state.log_history if "loss_soft" in e]
        assert losses[-1] < losses[0]
        assert not any("loss_soft_teacher_0" in e for e in trainer.state.log_history)
    trainer.save_model()
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path / "mean_probs" / "out")).__name__ == (
        "BertForSequenceClassification"
    )


def test_online_teachers_match_cached_logits(tmp_path, tokenizer, teacher_dirs):
    raw = pair_dataset(16)
    cached = tokenize(label_with_teachers(raw, teacher_dirs, max_length=32), tokenizer)
    online = tokenize(raw, tokenizer)
    args = make_args(tmp_path, alpha=0.5)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(),
        args=args,
        train_dataset=online,
        processing_class=tokenizer,
        teachers=teacher_dirs,
    )
    collate = DataCollatorWithTeacherLogits(tokenizer)
    cached_batch = collate([cached[i] for i in range(8)])
    online_batch = collate([online[i] for i in range(8)])
    assert "teacher_logits" not in online_batch
    trainer.model.eval()
    with torch.no_grad():
        loss_online = trainer.compute_loss(trainer.model, online_batch)
        loss_cached = trainer.compute_loss(trainer.model, cached_batch)
    torch.testing.assert_close(loss_online, loss_cached, atol=1e-5, rtol=1e-5)
    trainer.train()
    assert any("loss_soft_teacher_2" in e for e in trainer.state.log_history)


def test_regression_uses_mse(tmp_path, tokenizer):
    raw = pair_dataset(32, with_labels=False)
    rng = np.random.default_rng(0)
    raw = raw.add_column("label", rng.uniform(0, 5, size=len(raw)).astype(np.float32).tolist())
    ds = tokenize(with_logits(raw, num_teachers=2, num_labels=1), tokenizer)
    student = MultiHeadStudent(tiny_model("bert", num_labels=1), 2)
    trainer = MultiTeacherDistillationTrainer(
        model=student, args=make_args(tmp_path, alpha=0.5), train_dataset=ds, processing_class=tokenizer
    )
    batch = DataCollatorWithTeacherLogits(tokenizer)([ds[i] for i in range(4)])
    with torch.no_grad():
        out = student(**{k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")})
        loss = trainer.compute_loss(student, batch)
    soft = ((out.head_logits - batch["teacher_logits"]) ** 2).mean()  # equal weights: mean over heads and rows
    hard = ((out.head_logits.squeeze(-1) - batch["labels"][:, None]) ** 2).mean()
    torch.testing.assert_close(loss, 0.5 * soft + 0.5 * hard, atol=1e-5, rtol=1e-5)
    trainer.train()


def test_label_smoothing_factor_smooths_the_golden_label_loss(tmp_path, tokenizer):
    """`label_smoothing_factor` acts as in a plain Trainer: on the hard loss of every head, not on the soft targets."""
    ds = tokenize(with_logits(pair_dataset(16)), tokenizer)
    student = no_dropout_student()
    with torch.no_grad():  # confident heads, so smoothing changes the loss
        student.model.classifier.weight.mul_(200.0)
    batch = DataCollatorWithTeacherLogits(tokenizer)([ds[i] for i in range(6)])
    batch["labels"] = torch.zeros_like(batch["labels"])  # one class: smoothing's effect cannot cancel across rows
    with torch.no_grad():
        out = student(**{k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")})
    losses = {}
    for eps in (0.0, 0.2):
        trainer = MultiTeacherDistillationTrainer(
            model=student, args=make_args(tmp_path, alpha=0.0, label_smoothing_factor=eps), processing_class=tokenizer
        )
        with torch.no_grad():
            losses[eps] = trainer.compute_loss(student, batch)
    # equal head weights: the mean over heads of each head's smoothed cross-entropy
    smoothed = [F.cross_entropy(out.head_logits[:, h], batch["labels"], label_smoothing=0.2) for h in range(3)]
    expected = torch.stack(smoothed).mean()
    torch.testing.assert_close(losses[0.2], expected, atol=1e-5, rtol=1e-5)
    assert abs(losses[0.2] - losses[0.0]) > 1e-2


@pytest.mark.parametrize(
    "heads, setting",
    [
        (3, {"temperature": 4.0}),
        (3, {"soft_loss": "soft_ce"}),
        (3, {"soft_loss": "mse"}),
        (3, {"t2_scaling": False}),
        (3, {"teacher_weights": [0.7, 0.2, 0.1]}),
        (3, {"alpha": 0.8}),
        (1, {"teacher_aggregation": "mean_probs"}),
        (1, {"teacher_weights": [0.1, 0.1, 0.8], "temperature": 3.0}),
    ],
)
def test_compute_loss_passes_every_distillation_argument_to_the_loss(tmp_path, tokenizer, heads, setting):
    """On a fixed batch, `compute_loss` equals `multi_teacher_distillation_loss` called with the arguments' values,
    and differs from the default arguments' loss (so a setting the trainer dropped would fail here)."""
    from tmkd_hf.losses import multi_teacher_distillation_loss

    ds = tokenize(with_logits(pair_dataset(16)), tokenizer)
    student = no_dropout_student(num_heads=heads)
    batch = DataCollatorWithTeacherLogits(tokenizer)([ds[i] for i in range(8)])
    with torch.no_grad():
        out = student(**{k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")})
    student_logits = out.head_logits if heads > 1 else out.logits

    def trainer_loss(**overrides):
        trainer = MultiTeacherDistillationTrainer(model=student, args=make_args(tmp_path, **overrides),
                                                  processing_class=tokenizer)
        with torch.no_grad():
            return trainer.compute_loss(student, dict(batch))

    args = make_args(tmp_path, **setting)
    weights = torch.tensor(args.normalized_teacher_weights(3))
    expected, _ = multi_teacher_distillation_loss(
        student_logits, batch["teacher_logits"], batch["labels"], alpha=args.alpha, temperature=args.temperature,
        soft_loss_kind=args.soft_loss, t2_scaling=args.t2_scaling, teacher_weights=weights,
        teacher_aggregation=args.teacher_aggregation,
    )
    got = trainer_loss(**setting)
    torch.testing.assert_close(got, expected.mean(), atol=1e-6, rtol=1e-6)
    assert abs(got - trainer_loss()) > 1e-4, f"{setting} does not change the loss: the test could not catch a drop"


def test_compute_loss_func_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="computes the TMKD loss itself"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(),
            args=make_args(tmp_path),
            processing_class=tokenizer,
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum(),
        )


def test_stage_one_without_labels(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(24, with_labels=False)), tokenizer)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=make_args(tmp_path, alpha=1.0), train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    assert not any("loss_hard" in e for e in trainer.state.log_history)


def test_teacher_weights_set_the_head_combination(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16)), tokenizer)
    student = no_dropout_student()
    MultiTeacherDistillationTrainer(
        model=student,
        args=make_args(tmp_path, teacher_weights=[2.0, 1.0, 1.0]),
        train_dataset=ds,
        processing_class=tokenizer,
    )
    torch.testing.assert_close(student.head_weights, torch.tensor([0.5, 0.25, 0.25]))


# ----- errors that must be clear -----


def test_error_teacher_logits_missing_without_online_teachers(tmp_path, tokenizer):
    ds = tokenize(pair_dataset(16), tokenizer)
    with pytest.raises(ValueError, match="no 'teacher_logits' column and no online teachers"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(), args=make_args(tmp_path), train_dataset=ds, processing_class=tokenizer
        )
    # alpha=0 is plain fine-tuning: no teachers needed
    MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=make_args(tmp_path, alpha=0.0), train_dataset=ds, processing_class=tokenizer
    ).train()
    # a batch that lost its column (e.g. a user collator) is caught in the loss too
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=make_args(tmp_path, alpha=0.0), train_dataset=ds, processing_class=tokenizer
    )
    trainer.args.alpha = 0.5
    trainer.model.train()
    with pytest.raises(ValueError, match="DataCollatorWithTeacherLogits"):
        trainer.compute_loss(trainer.model, DataCollatorWithTeacherLogits(tokenizer)([ds[0], ds[1]]))


def test_error_logits_label_count_differs_from_student(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16), num_labels=3), tokenizer)
    with pytest.raises(ValueError, match="3 labels but the student predicts 2"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(), args=make_args(tmp_path), train_dataset=ds, processing_class=tokenizer
        )


def test_error_teacher_count_differs_from_heads(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16), num_teachers=2), tokenizer)
    with pytest.raises(ValueError, match="3 heads but teacher_logits hold 2 teachers"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(), args=make_args(tmp_path), train_dataset=ds, processing_class=tokenizer
        )


def test_error_nan_teacher_logits(tmp_path, tokenizer):
    raw = pair_dataset(16)
    logits = np.zeros((16, 3, 2), dtype=np.float32)
    logits[5, 1, 0] = np.nan
    ds = tokenize(raw.add_column("teacher_logits", logits.tolist()), tokenizer)
    args = make_args(tmp_path, train_sampling_strategy="sequential", per_device_train_batch_size=8)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=ds, processing_class=tokenizer
    )
    with pytest.raises(ValueError, match=r"NaN or inf: 1 of 8 examples .*positions \[5\].*teacher index\(es\) \[1\]"):
        trainer.train()


def test_labels_absent_alpha_below_one_is_an_error(tmp_path, tokenizer):
    unlabelled = tokenize(with_logits(pair_dataset(16, with_labels=False)), tokenizer)
    with pytest.raises(ValueError, match="no label column but alpha=0.5.*set alpha=1.0"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(),
            args=make_args(tmp_path, alpha=0.5),
            train_dataset=unlabelled,
            processing_class=tokenizer,
        )
    labelled = tokenize(with_logits(pair_dataset(16)), tokenizer)  # labels present and alpha=1: fine, ignored
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(),
        args=make_args(tmp_path, alpha=1.0),
        train_dataset=labelled,
        processing_class=tokenizer,
    )
    trainer.train()


def test_error_teacher_weights_length(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16)), tokenizer)
    with pytest.raises(ValueError, match="teacher_weights has 2 values but there are 3 teachers"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(),
            args=make_args(tmp_path, teacher_weights=[1, 1]),
            train_dataset=ds,
            processing_class=tokenizer,
        )
    single = tiny_model("bert")
    with pytest.raises(ValueError, match="teacher_weights has 2 values but there are 3 teachers"):
        MultiTeacherDistillationTrainer(
            model=single, args=make_args(tmp_path, teacher_weights=[1, 1]), train_dataset=ds, processing_class=tokenizer
        )


def test_error_online_teacher_with_other_vocabulary(tmp_path, tokenizer):
    other = tiny_model("bert", vocab_size=300)
    other.save_pretrained(tmp_path / "other")
    ds = tokenize(pair_dataset(8), tokenizer)
    with pytest.raises(ValueError, match="must share its tokenizer.*label_with_teachers"):
        MultiTeacherDistillationTrainer(
            model=no_dropout_student(num_heads=1),
            args=make_args(tmp_path),
            train_dataset=ds,
            processing_class=tokenizer,
            teachers=[str(tmp_path / "other")],
        )


def test_checkpoint_dir_not_loadable_as_plain_model_by_accident(tmp_path, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16)), tokenizer)
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    # a multi-head checkpoint is no plain config.json checkpoint: loading it as one fails loudly, not silently
    assert not os.path.exists(os.path.join(checkpoint, "config.json"))
    with pytest.raises((OSError, ValueError)):
        AutoModelForSequenceClassification.from_pretrained(checkpoint)
    assert MultiHeadStudent.from_pretrained(checkpoint).num_heads == 3


def test_load_best_model_at_end_and_gradient_checkpointing(tmp_path, tokenizer):
    train = tokenize(with_logits(pair_dataset(32)), tokenizer)
    dev = tokenize(with_logits(pair_dataset(16, seed=1), seed=1), tokenizer)
    args = make_args(
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        gradient_checkpointing=True,
    )
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(), args=args, train_dataset=train, eval_dataset=dev, processing_class=tokenizer
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.isdir(best)
    best_params = MultiHeadStudent.from_pretrained(best).state_dict()
    assert_same_params(best_params, params(trainer.model))
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert trainer.state.best_metric == pytest.approx(min(evals), abs=1e-6)


def test_load_best_model_at_end_loads_an_earlier_checkpoint(tmp_path, tokenizer):
    """The best checkpoint is the first of four (a metric that only gets worse), so the model at the end must be
    checkpoint-2's weights, not the last step's (which would pass a test whose best checkpoint is the last)."""
    train = tokenize(with_logits(pair_dataset(32)), tokenizer)
    dev = tokenize(with_logits(pair_dataset(16, seed=1), seed=1), tokenizer)
    evaluations = []

    def worse_each_time(eval_pred):
        evaluations.append(len(evaluations))
        return {"rank": float(len(evaluations))}  # 1.0 at the first evaluation, then 2.0, 3.0, 4.0

    args = make_args(
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="rank",
        greater_is_better=False,
    )
    trainer = MultiTeacherDistillationTrainer(
        model=no_dropout_student(),
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        compute_metrics=worse_each_time,
    )
    trainer.train()
    assert len(evaluations) == 4
    first, last = os.path.join(args.output_dir, "checkpoint-2"), os.path.join(args.output_dir, "checkpoint-8")
    assert trainer.state.best_model_checkpoint == first and trainer.state.best_metric == 1.0
    loaded = params(trainer.model)
    assert_same_params(MultiHeadStudent.from_pretrained(first).state_dict(), loaded)
    last_params = MultiHeadStudent.from_pretrained(last).state_dict()
    assert max((last_params[k].float() - loaded[k].float()).abs().max().item() for k in loaded) > 1e-3


def test_the_final_save_merges_the_gathered_state_dict_it_is_given(tmp_path, tokenizer):
    """Under FSDP / DeepSpeed, `Trainer.save_model` gathers the full weights and hands them to `_save` as
    `state_dict` while the module itself holds shards: the merged export must come from that state_dict."""
    student = no_dropout_student()
    trainer = MultiTeacherDistillationTrainer(model=student, args=make_args(tmp_path), processing_class=tokenizer)
    gathered = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                for k, v in student.state_dict().items()}  # fmt: skip
    before = params(student)
    trainer._save(str(tmp_path / "final"), state_dict=gathered)
    assert_same_params(params(student), before, atol=0)  # the live module is untouched
    expected = no_dropout_student()
    expected.load_state_dict(gathered)
    batch = tokenizer(["what city is it"], ["the river city"], return_tensors="pt")
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    with torch.no_grad():
        want = expected.eval()(**batch).logits
        torch.testing.assert_close(exported(**batch).logits, want, atol=1e-5, rtol=1e-5)
        assert (exported(**batch).logits - student.eval()(**batch).logits).abs().max() > 1e-4  # not the module's


def test_deepspeed_zero3_is_refused_and_stages_1_2_pass():
    from types import SimpleNamespace

    from tmkd_hf.trainer import check_deepspeed_stage

    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 is not supported .* Use ZeRO stage 1 or 2, FSDP or DDP"):
        check_deepspeed_stage(SimpleNamespace(zero_stage=3))
    for stage in (0, 1, 2):
        check_deepspeed_stage(SimpleNamespace(zero_stage=stage))
    check_deepspeed_stage(None)


def test_online_teachers_must_match_the_heads(tmp_path, tokenizer, teacher_dirs):
    online = tokenize(pair_dataset(8), tokenizer)
    with pytest.raises(ValueError, match="2 online teachers were given but the student has 3 heads"):
        MultiTeacherDistillationTrainer(model=no_dropout_student(), args=make_args(tmp_path), train_dataset=online,
                                        processing_class=tokenizer, teachers=teacher_dirs[:2])
    # a one-head student learns from however many teachers, aggregated
    MultiTeacherDistillationTrainer(model=no_dropout_student(num_heads=1), args=make_args(tmp_path),
                                    train_dataset=online, processing_class=tokenizer, teachers=teacher_dirs[:2])
