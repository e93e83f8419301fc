"""Readouts: [CLS] through the model's own head or the masked mean of the last hidden states, chosen from what the
backbone was trained with; the mean student's CrossEncoder export; the nearly-constant-readout warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import pair_dataset, tiny_config, tiny_model, tokenize
from datasets import Dataset
from transformers import AutoModel, AutoModelForSequenceClassification

from tmkd_hf import (
    DataCollatorWithTeacherLogits,
    DistillationArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    label_with_teachers,
    student_from_teacher_layers,
)
from tmkd_hf.losses import multi_teacher_distillation_loss
from tmkd_hf.readout import detect_readout, masked_mean, spread_ratio
from tmkd_hf.teachers import load_classifier

CROSS_ENCODER_SCRIPT = """
import json, sys
from sentence_transformers import CrossEncoder
model = CrossEncoder(sys.argv[1])
print(json.dumps(model.predict(json.loads(sys.argv[2]), batch_size=4).tolist()))
assert not any(name.startswith("tmkd_hf") for name in sys.modules), "tmkd_hf was imported"
"""


def with_logits(dataset: Dataset, num_teachers: int, seed: int = 0) -> Dataset:
    logits = np.random.default_rng(seed).normal(size=(len(dataset), num_teachers, 2)).astype(np.float32) * 2
    return dataset.add_column("teacher_logits", logits.tolist())


def write_pooling(path, config: dict, modules: bool = True, pooling_dir: str = "1_Pooling") -> None:
    os.makedirs(os.path.join(path, pooling_dir), exist_ok=True)
    with open(os.path.join(path, pooling_dir, "config.json"), "w") as f:
        json.dump(config, f)
    if modules:
        with open(os.path.join(path, "modules.json"), "w") as f:
            json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": pooling_dir, "type": "sentence_transformers.models.Pooling"}],
                      f)


@pytest.fixture
def mean_backbone(tmp_path, tokenizer):
    """A bare tiny BERT encoder saved the way sentence-transformers saves a mean-pooled model."""
    torch.manual_seed(0)
    path = str(tmp_path / "mean-backbone")
    AutoModel.from_config(tiny_config("bert")).save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_pooling(path, {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                         "pooling_mode_mean_tokens": True})
    return path


def batch_of(tokenizer, n: int = 6, seed: int = 0):
    raw = pair_dataset(n, seed=seed, with_labels=False)
    return tokenizer(list(raw["question"]), list(raw["sentence"]), padding=True, return_tensors="pt")


def test_detect_readout_reads_the_backbones_pooling(tmp_path, tokenizer):
    def saved(name):
        path = str(tmp_path / name)
        tiny_model().save_pretrained(path)
        return path

    assert detect_readout(saved("plain")) == "cls"  # a transformers checkpoint: [CLS]
    legacy = saved("legacy")
    write_pooling(legacy, {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False})
    assert detect_readout(legacy) == "mean"
    v6 = saved("v6")
    write_pooling(v6, {"embedding_dimension": 32, "pooling_mode": "mean"}, pooling_dir="pool")  # located via modules
    assert detect_readout(v6) == "mean"
    cls_pooled = saved("cls-pooled")
    write_pooling(cls_pooled, {"pooling_mode": "cls"})
    assert detect_readout(cls_pooled) == "cls"
    max_pooled = saved("max-pooled")
    write_pooling(max_pooled, {"pooling_mode_max_tokens": True})
    assert detect_readout(max_pooled) == "cls"  # not supported: [CLS], with a warning
    recorded = saved("recorded")
    config = json.load(open(os.path.join(recorded, "config.json")))
    json.dump({**config, "tmkd_readout": "mean"}, open(os.path.join(recorded, "config.json"), "w"))
    assert detect_readout(recorded) == "mean"  # tmkd_hf's own record wins


def test_mean_readout_is_masked_mean_then_each_head(mean_backbone, tokenizer):
    student = MultiHeadStudent.from_pretrained(mean_backbone, num_teachers=3, num_labels=2).eval()
    assert student.readout == "mean" and student.config.tmkd_readout == "mean"
    with torch.no_grad():
        student.head.weight.normal_()
        student.head.bias.normal_()
    batch = batch_of(tokenizer)
    out = student(**batch)
    hidden = student.model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    by_hand = torch.stack([mean @ student.head.weight[h].T + student.head.bias[h] for h in range(3)], dim=1)
    torch.testing.assert_close(out.head_logits, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, by_hand.mean(1), atol=1e-5, rtol=1e-5)
    # padding does not change a row's prediction
    alone = student(**tokenizer(["city river"], ["the king"], return_tensors="pt")).logits
    padded = tokenizer(["city river", "a much longer question with many words"], ["the king", "x y z w v u"],
                       padding=True, return_tensors="pt")
    torch.testing.assert_close(student(**padded).logits[:1], alone, atol=1e-5, rtol=1e-5)
    assert masked_mean(hidden, None).shape == mean.shape


def test_mean_student_exports_as_a_cross_encoder_that_loads_without_tmkd_hf(tmp_path, mean_backbone, tokenizer):
    pytest.importorskip("sentence_transformers")
    student = MultiHeadStudent.from_pretrained(mean_backbone, num_teachers=3, num_labels=2,
                                               id2label={0: "entailment", 1: "not_entailment"},
                                               label2id={"entailment": 0, "not_entailment": 1})
    with torch.no_grad():
        student.head.weight.normal_()
        student.head.bias.normal_()
    student.set_head_weights([0.5, 0.3, 0.2])
    student.eval()
    export = tmp_path / "export"
    student.save_pretrained(export, merged=True, tokenizer=tokenizer)
    assert {"modules.json", "1_Pooling", "2_Dense", "config.json", "model.safetensors"} <= set(os.listdir(export))

    raw = pair_dataset(7, seed=3, with_labels=False)
    pairs = [[q, s] for q, s in zip(raw["question"], raw["sentence"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CROSS_ENCODER_SCRIPT, str(export), json.dumps(pairs)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cross_encoder = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    with torch.no_grad():
        ours = student(**tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True,
                                   return_tensors="pt")).logits
    assert (cross_encoder - ours).abs().max().item() <= 1e-5

    reloaded = MultiHeadStudent.from_pretrained(export).eval()  # back in tmkd_hf: a one-head mean student
    assert reloaded.readout == "mean" and reloaded.num_heads == 1
    assert reloaded.config.id2label == {0: "entailment", 1: "not_entailment"}
    batch = batch_of(tokenizer, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, student(**batch).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(load_classifier(export)(**batch).logits, student(**batch).logits,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be read out through"):
        MultiHeadStudent.from_pretrained(export, readout="cls")


def test_multihead_checkpoint_keeps_its_readout(tmp_path, mean_backbone, tokenizer):
    student = MultiHeadStudent.from_pretrained(mean_backbone, num_teachers=2, num_labels=2).eval()
    student.save_pretrained(tmp_path / "ckpt")
    assert json.load(open(tmp_path / "ckpt" / "tmkd_student.json"))["readout"] == "mean"
    reloaded = MultiHeadStudent.from_pretrained(tmp_path / "ckpt").eval()
    assert reloaded.readout == "mean"
    batch = batch_of(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).head_logits, student(**batch).head_logits)
    with pytest.raises(ValueError, match="trained with readout='mean'"):
        MultiHeadStudent.from_pretrained(tmp_path / "ckpt", readout="cls")
    with pytest.raises(ValueError, match="readout must be one of"):
        MultiHeadStudent(tiny_model(), 2, readout="max")


def test_cls_backbones_keep_cls_and_their_logits(tmp_path, tokenizer):
    """A BERT-style checkpoint trained on [CLS] stays [CLS]: the student's logits are the model's own head's."""
    teacher = tiny_model("bert", seed=5)
    teacher.save_pretrained(tmp_path / "bert")
    student = student_from_teacher_layers(str(tmp_path / "bert"), layers=[1], num_labels=2)
    assert student.config.tmkd_readout == "cls"
    batch = batch_of(tokenizer)
    with torch.no_grad():
        plain_logits = student.eval()(**batch).logits
    multi = MultiHeadStudent(student, num_heads=3).eval()  # replaces the head in place: logits from before
    assert multi.readout == "cls"
    with torch.no_grad():
        torch.testing.assert_close(multi(**batch).logits, plain_logits)
    export = tmp_path / "cls-export"
    multi.save_pretrained(export, merged=True)
    plain = AutoModelForSequenceClassification.from_pretrained(export).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, multi(**batch).logits, atol=1e-6, rtol=1e-5)


def test_student_from_mean_backbone_records_the_mean_readout(mean_backbone):
    student = student_from_teacher_layers(mean_backbone, layers=[1], num_labels=2)
    assert student.config.tmkd_readout == "mean"
    assert MultiHeadStudent(student, num_heads=2).readout == "mean"  # the default follows the backbone
    assert MultiHeadStudent(student, num_heads=2, readout="cls").readout == "cls"  # overridable


def args(tmp_path, **kwargs):
    return DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                                 save_strategy="no", per_device_train_batch_size=8, **kwargs)


def test_one_head_student_learns_from_the_aggregated_teachers(tmp_path, mean_backbone, tokenizer):
    ds = tokenize(with_logits(pair_dataset(16), num_teachers=3), tokenizer)
    student = MultiHeadStudent.from_pretrained(mean_backbone, num_teachers=1, num_labels=2)
    trainer = MultiTeacherDistillationTrainer(model=student, args=args(tmp_path, alpha=0.7, temperature=3.0,
                                                                       teacher_aggregation="mean_probs"),
                                              train_dataset=ds, processing_class=tokenizer)
    batch = DataCollatorWithTeacherLogits(tokenizer)([ds[i] for i in range(8)])
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, batch)
        logits = student(**{k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}).logits
        expected, _ = multi_teacher_distillation_loss(logits, batch["teacher_logits"], batch["labels"], alpha=0.7,
                                                      temperature=3.0, teacher_aggregation="mean_probs")
    torch.testing.assert_close(loss, expected.mean())


def test_nearly_constant_readout_warns(tmp_path, mean_backbone, tokenizer, caplog):
    ds = tokenize(with_logits(pair_dataset(32), num_teachers=2), tokenizer)
    constant = tiny_model("bert", seed=1)
    with torch.no_grad():  # the pooler's output no longer depends on the input: tanh(bias)
        constant.bert.pooler.dense.weight.zero_()
        constant.bert.pooler.dense.bias.uniform_(-1, 1)
    with caplog.at_level(logging.WARNING, logger="tmkd_hf"):
        MultiTeacherDistillationTrainer(model=MultiHeadStudent(constant, 2), args=args(tmp_path),
                                        train_dataset=ds, processing_class=tokenizer)
    assert "nearly constant across examples" in caplog.text and "readout='mean'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tmkd_hf"):
        mean = MultiHeadStudent.from_pretrained(mean_backbone, num_teachers=2, num_labels=2)
        MultiTeacherDistillationTrainer(model=mean, args=args(tmp_path), train_dataset=ds,
                                        processing_class=tokenizer)
    assert "nearly constant" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tmkd_hf"):  # a plain [CLS] model from a mean-pooled backbone
        plain = student_from_teacher_layers(mean_backbone, layers=[0, 1], num_labels=2)
        MultiTeacherDistillationTrainer(model=plain, args=args(tmp_path, alpha=0.0), train_dataset=ds,
                                        processing_class=tokenizer)
    assert "trained with mean pooling" in caplog.text
    assert spread_ratio(torch.ones(5, 3)) == 0.0


def test_label_with_a_cross_encoder_teacher(tmp_path, mean_backbone, tokenizer):
    teacher = MultiHeadStudent.from_pretrained(mean_backbone, num_teachers=1, num_labels=2)
    with torch.no_grad():
        teacher.head.weight.normal_()
    teacher.eval()
    teacher.save_pretrained(tmp_path / "teacher", merged=True, tokenizer=tokenizer)
    raw = pair_dataset(10, with_labels=False)
    labelled = label_with_teachers(raw, [str(tmp_path / "teacher")], text_columns=("question", "sentence"),
                                   batch_size=4, show_progress=False)
    logits = torch.tensor(list(labelled["teacher_logits"]))[:, 0]
    with torch.no_grad():
        expected = teacher(**tokenizer(list(raw["question"]), list(raw["sentence"]), padding=True,
                                       return_tensors="pt")).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_mean_readout_is_refused_where_the_encoder_shortens_the_sequence():
    """Funnel pools the sequence between its blocks: its last hidden states are shorter than the attention mask, so a
    mean over the mask cannot be taken. Refused when the student is built, not at its first forward pass."""
    from test_families import family_config

    funnel = AutoModelForSequenceClassification.from_config(family_config("funnel"))
    with pytest.raises(ValueError, match=r"pools the sequence between its blocks.*readout='cls'"):
        MultiHeadStudent(funnel, 2, readout="mean")
    assert MultiHeadStudent(funnel, 2).readout == "cls"


@pytest.mark.parametrize("family", ["nomic_bert", "gte"])
def test_cross_encoder_export_reloads_families_that_rename_their_weights(tmp_path, tokenizer, family):
    """NomicBERT and GTE save their weights under their original checkpoints' names (`emb_ln`, `qkv_proj`) and
    rename them on loading: the CrossEncoder export reloads through from_pretrained, not from the raw file."""
    from test_families import family_config

    torch.manual_seed(0)
    student = MultiHeadStudent(AutoModelForSequenceClassification.from_config(family_config(family)), 2,
                               readout="mean").eval()  # fmt: skip
    student.save_pretrained(tmp_path / "export", merged=True, tokenizer=tokenizer)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(tmp_path / "export")(**batch).logits, student(**batch).logits)
