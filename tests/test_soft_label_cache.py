"""The soft-label cache (tmkd_hf.soft_label_cache): the manifest on disk and in the dataset, damaged caches named and
rebuilt, caches from other rows or in another label order refused by the loader, the trainer and the recipes."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import pair_dataset, tiny_model
from datasets import load_from_disk

from tmkd_hf import DistillationArguments, MultiHeadStudent, MultiTeacherDistillationTrainer, label_with_teachers
from tmkd_hf.soft_label_cache import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    DamagedCacheError,
    load_teacher_logits,
    read_manifest,
    same_label_order,
)
from tmkd_hf.trainer import _check_label_order

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("damage", ["manifest", "arrow"])
def test_a_damaged_finished_cache_is_named_and_rebuilt(tmp_path, teacher_dirs, damage, caplog):
    ds = pair_dataset(16, seed=3)
    out = tmp_path / "cache"
    clean = np.asarray(label_with_teachers(ds, teacher_dirs, output_dir=out, show_progress=False)["teacher_logits"])
    target = out / MANIFEST_NAME if damage == "manifest" else sorted(out.glob("data-*.arrow"))[0]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # a copy cut short
    expected = "is damaged"
    with pytest.raises(DamagedCacheError, match=expected) as raised:
        load_teacher_logits(out)
    assert (str(target) if damage == "manifest" else target.name) in str(raised.value)
    assert "Rebuild" in str(raised.value)
    with caplog.at_level("WARNING", logger="tmkd_hf.labelling"):
        rebuilt = label_with_teachers(ds, teacher_dirs, output_dir=out, show_progress=False)
    assert any("Relabelling" in r.getMessage() and expected in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.asarray(rebuilt["teacher_logits"]), clean)
    np.testing.assert_array_equal(np.asarray(load_teacher_logits(out)["teacher_logits"]), clean)  # whole again


def test_manifest_on_disk_and_mismatch_errors(tmp_path, teacher_dirs, tokenizer):
    ds = pair_dataset(20, seed=11)
    (tmp_path / "notes.txt").write_text("a user's file beside the cache")
    label_with_teachers(ds, teacher_dirs, output_dir=tmp_path, show_progress=False)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert {
        "teachers",
        "label_names",
        "text_columns",
        "max_length",
        "dtype",
        "num_rows",
        "source_fingerprint",
        "tmkd_hf_version",
    } <= set(manifest)
    assert len(manifest["teachers"]) == 3 and all("weights_sha256" in t for t in manifest["teachers"])
    reloaded = load_from_disk(str(tmp_path))
    assert read_manifest(reloaded) == manifest

    other = pair_dataset(20, seed=12)
    with pytest.raises(ValueError, match="already holds teacher logits built from other rows or teachers"):
        label_with_teachers(other, teacher_dirs, output_dir=tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="computed on other rows than the given dataset"):
        load_teacher_logits(tmp_path, other)
    assert len(load_teacher_logits(tmp_path, ds)) == 20
    relabelled = label_with_teachers(other, teacher_dirs, output_dir=tmp_path, overwrite=True, show_progress=False)
    assert list(relabelled["question"]) == list(other["question"])
    assert (tmp_path / "notes.txt").exists() and all(os.path.isdir(d) for d in teacher_dirs)  # nothing else removed

    # training refuses a cache whose rows were swapped for others behind its back
    swapped = relabelled.remove_columns(["question", "sentence"]).add_column("question", list(ds["question"]))
    swapped = swapped.add_column("sentence", list(ds["sentence"]))
    swapped.info.description = relabelled.info.description
    tokenized = swapped.map(lambda b: tokenizer(b["question"], b["sentence"]), batched=True)
    args = DistillationArguments(output_dir=str(tmp_path / "train"), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="computed on other rows than train_dataset"):
        MultiTeacherDistillationTrainer(
            model=MultiHeadStudent(tiny_model("bert"), 3),
            args=args,
            train_dataset=tokenized,
            processing_class=tokenizer,
        )
    # the genuine cache passes, shuffled or not
    good = relabelled.map(lambda b: tokenizer(b["question"], b["sentence"]), batched=True)
    for train in (good, good.shuffle(seed=0)):
        MultiTeacherDistillationTrainer(
            model=MultiHeadStudent(tiny_model("bert"), 3), args=args, train_dataset=train, processing_class=tokenizer
        )


def test_the_cache_format_stands_without_the_labelling_pass():
    """tmkd_hf.soft_label_cache imports nothing of the labelling pass (which writes caches through it); the names it
    took over stay importable from tmkd_hf.labelling, as the same objects."""
    import ast
    from pathlib import Path

    import tmkd_hf.labelling as labelling
    import tmkd_hf.soft_label_cache as cache

    tree = ast.parse(Path(cache.__file__).read_text())
    imported = {"." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert ".labelling" not in imported, imported
    for name in ("MANIFEST_NAME", "MANIFEST_FORMAT", "DamagedCacheError", "read_manifest", "verify_rows",
                 "source_fingerprint", "load_teacher_logits"):  # fmt: skip
        assert getattr(labelling, name) is getattr(cache, name), name


def test_trainer_refuses_a_cache_in_another_label_order(tokenizer):
    teacher = tiny_model("bert", seed=3, num_labels=2)
    teacher.config.id2label = {0: "entailment", 1: "not_entailment"}
    teacher.config.label2id = {"entailment": 0, "not_entailment": 1}
    labelled = label_with_teachers(pair_dataset(8), [(teacher, tokenizer)], show_progress=False)
    train = labelled.map(lambda b: tokenizer(b["question"], b["sentence"]), batched=True)
    args = DistillationArguments(output_dir="unused", report_to="none", use_cpu=True)
    student = tiny_model("bert", num_labels=2)
    student.config.id2label = {0: "not_entailment", 1: "entailment"}
    with pytest.raises(ValueError, match=r"label order \['entailment', 'not_entailment'\] but the student"):
        MultiTeacherDistillationTrainer(model=MultiHeadStudent(student, 1), args=args, train_dataset=train,
                                        processing_class=tokenizer)
    student.config.id2label = {0: "entailment", 1: "not_entailment"}
    MultiTeacherDistillationTrainer(model=MultiHeadStudent(student, 1), args=args, train_dataset=train,
                                    processing_class=tokenizer)


# (label_names in the cache, the student's / the run's labels, same order?)
LABEL_ORDER_CASES = [
    (["entailment", "not_entailment"], ["Entailment", "NOT_ENTAILMENT"], True),  # case is ignored
    (["entailment", "not_entailment"], ["not_entailment", "entailment"], False),  # swapped
    (["entailment", "not_entailment"], ["entailment", "neutral", "contradiction"], False),  # another label set
    (["LABEL_0", "LABEL_1"], ["not_entailment", "entailment"], True),  # unnamed teachers: labels by position
    (["entailment", "not_entailment"], ["LABEL_0", "LABEL_1"], True),  # unnamed student: labels by position
    (["LABEL_yes", "LABEL_no"], ["LABEL_no", "LABEL_yes"], False),  # real names, though they start with LABEL_
    (None, ["entailment", "not_entailment"], True),  # a manifest without label names: nothing to compare
]


@pytest.mark.parametrize("cached, names, same", LABEL_ORDER_CASES)
def test_the_trainer_and_run_glue_distill_apply_one_label_order_rule(tmp_path, cached, names, same):
    """The trainer (cache vs the student's id2label) and run_glue_distill.py (cache vs the run's labels) refuse the
    same caches: both ask tmkd_hf.soft_label_cache.check_label_order."""
    sys.path.insert(0, str(RECIPES))
    try:
        import run_glue_distill
    finally:
        sys.path.remove(str(RECIPES))
    assert same_label_order(cached, names) is same
    manifest = {"format": MANIFEST_FORMAT, "label_names": cached}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    student = tiny_model("bert", num_labels=len(names))
    student.config.id2label = dict(enumerate(names))
    callers = {
        "trainer": lambda: _check_label_order(manifest, student),
        "run_glue_distill": lambda: run_glue_distill.check_cache_label_order(str(tmp_path), names),
    }
    for caller, check in callers.items():
        try:
            check()
        except ValueError as err:
            assert not same, f"{caller} refused a cache in label order {cached} for the labels {names}: {err}"
            assert re.search(r"are in label order .* but (the student's id2label is|this run's labels are)", str(err))
        else:
            assert same, f"{caller} accepted a cache in label order {cached} for the labels {names}"
