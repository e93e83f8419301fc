"""With nothing to distil, `MultiTeacherDistillationTrainer` is `Trainer` (issue 34): what a script written for
`Trainer` does must keep working with ours in its place. Each test is one cause found by running transformers' own
Trainer tests against ours (`benchmarks/peer_trainer_tests.py`), checked here on tiny models built from configs."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import pair_dataset, tiny_model, tokenize
from datasets import Dataset
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer import TRAINING_ARGS_NAME

from tmkd_hf import DataCollatorWithTeacherLogits, DistillationArguments, MultiTeacherDistillationTrainer
from tmkd_hf.arguments import upgrade_arguments
from tmkd_hf.losses import (
    aggregate_teacher_logits,
    hard_loss,
    multi_label_kl_loss,
    multi_label_soft_cross_entropy_loss,
    multi_teacher_distillation_loss,
)
from tmkd_hf.trainer import objective_without_loss_parts

COMMON = dict(report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)


@dataclass
class ScriptArguments(TrainingArguments):
    """A script's own arguments, as run_glue-style scripts and transformers' tests write them."""

    note: str = field(default="default", metadata={"help": "an extra field of the script's own"})


def plain_args(tmp_path, args_class=TrainingArguments, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=64,
                    learning_rate=1e-3, max_steps=2, **COMMON)
    settings.update(overrides)
    return args_class(**settings)


def labelled(tokenizer, n: int = 16, seed: int = 0) -> Dataset:
    return tokenize(pair_dataset(n, seed=seed), tokenizer)


def with_teacher_logits(dataset: Dataset, num_labels: int = 2) -> Dataset:
    rng = np.random.default_rng(0)
    return dataset.add_column("teacher_logits", rng.normal(size=(len(dataset), 2, num_labels)).tolist())


def one_batch(dataset: Dataset, tokenizer) -> dict[str, torch.Tensor]:
    return DataCollatorWithTeacherLogits(tokenizer)([dataset[i] for i in range(len(dataset))])


# ----- 1. a script's own TrainingArguments subclass is kept -----


def test_a_scripts_training_arguments_subclass_is_kept_edited_and_saved(tmp_path, tokenizer):
    args = plain_args(tmp_path, ScriptArguments, note="kept", save_strategy="steps", save_steps=2)
    trainer = MultiTeacherDistillationTrainer(
        model=tiny_model("bert"), args=args, train_dataset=with_teacher_logits(labelled(tokenizer)),
        processing_class=tokenizer,
    )
    assert trainer.args is args  # Trainer keeps the object it is given
    assert isinstance(args, ScriptArguments) and isinstance(args, DistillationArguments)
    assert type(args).__name__ == "ScriptArguments" and args.note == "kept" and args.alpha == 0.5
    args.learning_rate = 0.0  # an edit after construction reaches the run: nothing moves
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    saved = torch.load(tmp_path / "out" / "checkpoint-2" / TRAINING_ARGS_NAME, weights_only=False)
    assert isinstance(saved, ScriptArguments) and type(saved) is type(args)
    assert (saved.note, saved.alpha, saved.learning_rate) == ("kept", 0.5, 0.0)


def test_upgraded_arguments_pickle_without_their_token_and_keep_their_values(tmp_path):
    args = upgrade_arguments(plain_args(tmp_path, ScriptArguments, note="n", hub_token="hf_secret"),
                             DistillationArguments)
    restored = pickle.loads(pickle.dumps(args))
    assert type(restored) is type(args) and restored.note == "n" and restored.alpha == 0.5
    assert restored.hub_token is None and args.hub_token == "hf_secret"
    assert "alpha" in args.to_dict() and "note" in args.to_dict()
    plain = upgrade_arguments(plain_args(tmp_path), DistillationArguments)
    assert type(plain) is DistillationArguments  # a plain TrainingArguments simply becomes the args class
    with pytest.raises(ValueError, match="temperature must be"):  # a field of the script's own is checked too
        upgrade_arguments(plain_args(tmp_path, TemperatureArguments), DistillationArguments)


@dataclass
class TemperatureArguments(TrainingArguments):
    temperature: float = -1.0


# ----- 2. outputs without a `.logits` attribute -----


def test_a_classifier_built_with_return_dict_false_trains_and_predicts(tmp_path, tokenizer):
    train, dev = labelled(tokenizer), labelled(tokenizer, 12, seed=1)
    model = tiny_model("bert", return_dict=False)
    trainer = MultiTeacherDistillationTrainer(
        model=model, args=plain_args(tmp_path, DistillationArguments, alpha=0.0), train_dataset=train,
        eval_dataset=dev, processing_class=tokenizer,
    )
    trainer.train()
    pred = trainer.predict(dev)
    assert pred.predictions.shape == (12, 2)
    batch = one_batch(dev, tokenizer)
    model.config.return_dict = True
    with torch.no_grad():
        expected = trainer.model.eval()(**batch)
    np.testing.assert_allclose(pred.predictions, expected.logits.numpy(), atol=1e-5)
    assert pred.metrics["test_loss"] == pytest.approx(expected.loss.item(), rel=1e-5)


class DictOutputClassifier(nn.Module):
    """A custom student returning a plain dict, as Trainer allows."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return {"logits": self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits}


def test_a_student_returning_a_dict_with_logits_distils(tmp_path, tokenizer):
    train = with_teacher_logits(labelled(tokenizer))
    trainer = MultiTeacherDistillationTrainer(
        model=DictOutputClassifier(tiny_model("bert")), args=plain_args(tmp_path, DistillationArguments, alpha=0.5),
        train_dataset=train, processing_class=tokenizer,
    )
    trainer.train()
    assert any("loss_soft" in log for log in trainer.state.log_history)
    assert trainer.predict(train).predictions.shape == (16, 2)


# ----- 3. multi-label classification -----


def multi_label_dataset(tokenizer, n: int = 16) -> Dataset:
    rng = np.random.default_rng(1)
    return labelled(tokenizer, n).remove_columns("label").add_column(
        "labels", rng.integers(0, 2, size=(n, 3)).astype(np.float32).tolist()
    )


def test_multi_label_classifier_trains_with_its_own_bce_loss(tmp_path, tokenizer):
    train = multi_label_dataset(tokenizer)
    model = tiny_model("bert", num_labels=3, problem_type="multi_label_classification")
    trainer = MultiTeacherDistillationTrainer(
        model=model, args=plain_args(tmp_path, DistillationArguments, alpha=0.0), train_dataset=train,
        processing_class=tokenizer,
    )
    batch = one_batch(train, tokenizer)
    model.eval()
    with torch.no_grad():
        assert trainer.compute_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-5)
    trainer.train()
    # and with teachers only (stage 1, no labels): the config's problem type picks the per-label soft loss
    unlabelled = with_teacher_logits(train.remove_columns("labels"), num_labels=3)
    distil = MultiTeacherDistillationTrainer(
        model=model, args=plain_args(tmp_path, DistillationArguments, alpha=1.0, temperature=2.0),
        train_dataset=unlabelled, processing_class=tokenizer,
    )
    batch = one_batch(unlabelled, tokenizer)
    model.eval()
    with torch.no_grad():
        loss = distil.compute_loss(model, batch).item()
        student = model(**{k: v for k, v in batch.items() if k != "teacher_logits"}).logits
    expected = multi_label_kl_loss(student, batch["teacher_logits"].mean(1), temperature=2.0).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    distil.train()


def test_multi_label_soft_losses_by_hand():
    s, t = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.0]])
    p, q = torch.sigmoid(t / 2), torch.sigmoid(s / 2)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * 4
    torch.testing.assert_close(multi_label_kl_loss(s, t, 2.0), kl.reshape(1))
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean() * 4
    torch.testing.assert_close(multi_label_soft_cross_entropy_loss(s, t, 2.0), (kl + entropy).reshape(1))
    assert multi_label_kl_loss(t, t, 3.0).abs().item() < 1e-6
    teachers, weights = torch.tensor([[[2.0, -1.0], [0.0, 1.0]]]), torch.tensor([0.25, 0.75])
    target = aggregate_teacher_logits(teachers, weights, "mean_probs", 2.0, multi_label=True)
    torch.testing.assert_close(torch.sigmoid(target / 2), (torch.sigmoid(teachers / 2) * weights[:, None]).sum(1))
    loss, mask = hard_loss(s, torch.tensor([[1.0, -100.0]]), problem_type="multi_label_classification")
    torch.testing.assert_close(loss, nn.functional.binary_cross_entropy_with_logits(s[:, :1], torch.ones(1, 1))[None])
    assert mask.tolist() == [True]
    targets = torch.tensor([[1.0, 0.0]])  # a float [batch, labels] matrix: multi-label, as transformers infers it
    per_example, _ = multi_teacher_distillation_loss(s, None, targets)
    torch.testing.assert_close(per_example, nn.functional.binary_cross_entropy_with_logits(s, targets)[None])


# ----- 4. hyperparameter_search's default objective -----


def test_the_default_hp_search_objective_ignores_the_loss_parts(tmp_path, tokenizer, monkeypatch):
    dev = labelled(tokenizer, 12, seed=1)

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = MultiTeacherDistillationTrainer(
        model=tiny_model("bert"), args=plain_args(tmp_path, DistillationArguments, alpha=0.0),
        eval_dataset=dev, processing_class=tokenizer, compute_metrics=accuracy,
    )
    metrics = trainer.evaluate()
    assert "eval_loss_hard" in metrics  # reported, but not a score to add up
    metrics.pop("eval_model_preparation_time", None)  # Trainer's default objective adds it too: not ours to test
    assert objective_without_loss_parts(metrics) == pytest.approx(metrics["eval_accuracy"])
    assert objective_without_loss_parts({k: v for k, v in metrics.items() if k != "eval_accuracy"}) == \
        pytest.approx(metrics["eval_loss"])
    objectives = []
    monkeypatch.setattr(Trainer, "hyperparameter_search",
                        lambda self, hp_space, compute_objective, *a, **kw: objectives.append(compute_objective))
    trainer.hyperparameter_search(n_trials=1)
    assert objectives[0](metrics) == pytest.approx(metrics["eval_accuracy"])


# ----- 5. rows labelled -100 at alpha 0 -----


def test_unlabelled_rows_do_not_dilute_the_loss_at_alpha_zero(tmp_path, tokenizer):
    dev = labelled(tokenizer, 16, seed=2)
    dev = dev.map(lambda row, i: {"label": -100 if i % 4 == 0 else row["label"]}, with_indices=True)
    model = tiny_model("bert")
    trainer = MultiTeacherDistillationTrainer(
        model=model, args=plain_args(tmp_path, DistillationArguments, alpha=0.0), eval_dataset=dev,
        processing_class=tokenizer,
    )
    with torch.no_grad():
        own = model.eval()(**one_batch(dev, tokenizer)).loss.item()  # cross-entropy over the 12 labelled rows
    assert trainer.evaluate()["eval_loss"] == pytest.approx(own, rel=1e-5)
    batches = [one_batch(dev.select(range(i, i + 4)), tokenizer) for i in (0, 4)]
    _, num_items = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
    assert num_items.item() == 6  # the labelled rows the accumulated loss is divided by


# ----- 6. a config without num_labels -----


class MockConfig:
    problem_type = "multi_label_classification"


class NoNumLabelsModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = MockConfig()
        self.linear = nn.Linear(4, 3)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        loss = None if labels is None else nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_a_config_without_num_labels_builds(tmp_path, alpha):
    trainer = MultiTeacherDistillationTrainer(
        model=NoNumLabelsModel(), args=plain_args(tmp_path, DistillationArguments, alpha=alpha)
    )
    assert trainer.teachers == []


# ----- 7. nothing to distil: a model's own loss, through Trainer -----


class OwnLossRegression(nn.Module):
    """Returns `(loss, predictions)` with 1-D predictions, like transformers' test models."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def forward(self, x, labels=None):
        y = self.a * x + self.b
        return (y,) if labels is None else (nn.functional.mse_loss(y, labels), y)


def test_a_model_computing_its_own_loss_trains_as_under_trainer(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=64).astype(np.float32)
    data = Dataset.from_dict({"x": x, "labels": 2 * x + 3})
    args = plain_args(tmp_path, DistillationArguments, alpha=0.0, max_steps=-1, num_train_epochs=3,
                      per_device_train_batch_size=8, learning_rate=0.5, gradient_accumulation_steps=2)
    trainer = MultiTeacherDistillationTrainer(model=OwnLossRegression(), args=args, train_dataset=data,
                                              eval_dataset=data)
    assert trainer.defers_to_trainer
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    reference = Trainer(model=OwnLossRegression(), args=args, train_dataset=data, eval_dataset=data)
    reference.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before / 2 and after == pytest.approx(reference.evaluate()["eval_loss"], rel=1e-5)
    pred = trainer.predict(data)
    np.testing.assert_allclose(pred.predictions, reference.predict(data).predictions, rtol=1e-5)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def test_a_causal_lm_with_token_labels_trains_as_under_trainer(tmp_path):
    ids = torch.randint(0, 32, (8, 10), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = plain_args(tmp_path, DistillationArguments, alpha=0.0)
    losses = []
    for trainer_class in (MultiTeacherDistillationTrainer, Trainer):
        trainer = trainer_class(model=tiny_gpt2(), args=args, train_dataset=data, eval_dataset=data)
        trainer.train()
        losses.append(trainer.evaluate()["eval_loss"])
    ours, reference = losses
    assert math.isfinite(ours) and ours == pytest.approx(reference, rel=1e-5)


def test_a_sequence_classifier_keeps_our_exact_gradient_accumulation(tmp_path, tokenizer):
    """Not deferred: for a BERT classifier (forward takes **kwargs) plain Trainer 5.25 would not divide the loss
    by the accumulation steps; ours gives what one full batch gives."""
    train = labelled(tokenizer, 8)
    kwargs = dict(alpha=0.0, max_steps=-1, num_train_epochs=1, optim="sgd", learning_rate=0.5,
                  train_sampling_strategy="sequential")
    runs = {}
    for name, batch_size, steps in (("full", 8, 1), ("ga", 4, 2)):
        model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        args = plain_args(tmp_path / name, DistillationArguments, per_device_train_batch_size=batch_size,
                          gradient_accumulation_steps=steps, **kwargs)
        trainer = MultiTeacherDistillationTrainer(model=model, args=args, train_dataset=train,
                                                  processing_class=tokenizer)
        assert not trainer.defers_to_trainer
        trainer.train()
        runs[name] = trainer.model.state_dict()
    for key, value in runs["full"].items():
        torch.testing.assert_close(runs["ga"][key], value, atol=2e-6, rtol=1e-5, msg=key)


def test_compute_loss_func_is_trainers_when_nothing_is_distilled(tmp_path, tokenizer):
    seen = []

    def loss_func(outputs, labels, num_items_in_batch=None):
        seen.append(labels.shape)
        return nn.functional.cross_entropy(outputs.logits, labels)

    trainer = MultiTeacherDistillationTrainer(
        model=tiny_model("bert"), args=plain_args(tmp_path, DistillationArguments, alpha=0.0),
        train_dataset=labelled(tokenizer), processing_class=tokenizer, compute_loss_func=loss_func,
    )
    trainer.train()
    assert trainer.defers_to_trainer and seen == [(4,), (4,)]


# ----- 8. Trainer's callbacks, exactly; the model card still gathers the run -----


def test_the_callback_list_is_trainers_and_the_card_is_still_filled(tmp_path, tokenizer):
    train, dev = labelled(tokenizer), labelled(tokenizer, 12, seed=1)
    args = plain_args(tmp_path, DistillationArguments, alpha=0.0)
    ours = MultiTeacherDistillationTrainer(model=tiny_model("bert"), args=args, train_dataset=train,
                                           eval_dataset=dev, processing_class=tokenizer)
    plain = Trainer(model=tiny_model("bert"), args=args, train_dataset=train, processing_class=tokenizer)
    assert [type(c) for c in ours.callback_handler.callbacks] == [type(c) for c in plain.callback_handler.callbacks]

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    ours.compute_metrics = accuracy
    ours.train()
    ours.predict(dev)  # its loss parts are dropped: the evaluation after it logs its own only
    ours.evaluate()
    card = ours.model_card_data
    assert set(card.eval_results) == {"validation", "test"} and "accuracy" in card.eval_results["test"]
    assert card.train_summary["steps"] == 2 and card.hyperparameters["learning_rate"] == 1e-3


# ----- and: hidden states, label_names, a ragged first row -----


def test_predict_returns_hidden_states_as_trainer_does(tmp_path, tokenizer):
    dev = labelled(tokenizer, 12, seed=1)
    args = plain_args(tmp_path, DistillationArguments, alpha=0.0)
    ours = MultiTeacherDistillationTrainer(model=tiny_model("bert", output_hidden_states=True), args=args,
                                           processing_class=tokenizer).predict(dev)
    plain = Trainer(model=tiny_model("bert", output_hidden_states=True), args=args,
                    processing_class=tokenizer).predict(dev)
    assert isinstance(ours.predictions, tuple) and len(ours.predictions) == len(plain.predictions) == 2
    np.testing.assert_allclose(ours.predictions[0], plain.predictions[0], atol=1e-6)
    assert [h.shape for h in ours.predictions[1]] == [h.shape for h in plain.predictions[1]]


def test_label_names_name_the_golden_label_column(tmp_path, tokenizer):
    dev = labelled(tokenizer, 12, seed=1).rename_column("label", "target")
    model = tiny_model("bert")
    trainer = MultiTeacherDistillationTrainer(
        model=model, args=plain_args(tmp_path, DistillationArguments, alpha=0.0, label_names=["target"]),
        train_dataset=dev, eval_dataset=dev, processing_class=tokenizer,
    )
    pred = trainer.predict(dev)
    assert pred.label_ids.tolist() == dev["target"]
    batch = one_batch(dev, tokenizer)
    with torch.no_grad():
        own = model.eval()(**{k: v for k, v in batch.items() if k != "target"}, labels=batch["target"]).loss.item()
    assert pred.metrics["test_loss"] == pytest.approx(own, rel=1e-5)
    trainer.train()


def test_a_ragged_first_row_of_teacher_logits_is_named(tmp_path, tokenizer):
    train = labelled(tokenizer, 8).add_column("teacher_logits", [[[0.1, 0.2], [0.3]]] + [[[0.1, 0.2], [0.3, 0.4]]] * 7)
    with pytest.raises(ValueError, match=r"teacher_logits of example 0 .*inner lengths \[2, 1\]"):
        MultiTeacherDistillationTrainer(model=tiny_model("bert"), args=plain_args(tmp_path, DistillationArguments),
                                        train_dataset=train, processing_class=tokenizer)
