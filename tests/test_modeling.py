"""MultiHeadStudent: per-head forward, exact merge into a plain checkpoint, checkpoints that keep every head."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from torch import nn
from transformers import AutoModelForSequenceClassification

import tmkd_hf.hub_id
import tmkd_hf.modeling
import tmkd_hf.peft_student
import tmkd_hf.teachers
from tmkd_hf import MultiHeadStudent
from tmkd_hf.modeling import STUDENT_CONFIG_NAME, MultiHeadLinear, find_classification_head

FAMILIES = {
    "bert": "classifier",
    "roberta": "classifier.out_proj",
    "distilbert": "classifier",
    "mpnet": "classifier.out_proj",
}


def diverse_student(family: str, num_heads: int = 3, num_labels: int = 3, seed: int = 0) -> MultiHeadStudent:
    student = MultiHeadStudent(tiny_model(family, num_labels=num_labels, seed=seed), num_heads)
    with torch.no_grad():  # heads that differ, as after training, so the merge has something to fold
        student.head.weight.normal_(std=0.5)
        student.head.bias.normal_(std=0.5)
    return student.eval()


def batch(seed: int = 0, size: int = 4, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_head_found_per_family_and_forward_shapes(family):
    student = diverse_student(family, num_heads=4, num_labels=3)
    assert student.head_module == FAMILIES[family]
    assert isinstance(student.head, MultiHeadLinear)
    out = student(**batch())
    assert out.head_logits.shape == (4, 4, 3)
    assert out.logits.shape == (4, 3)
    torch.testing.assert_close(out.logits, out.head_logits.mean(1))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_merge_heads_is_exact(family):
    student = diverse_student(family, num_heads=3, num_labels=3)
    student.set_head_weights([0.2, 0.5, 0.3])
    merged = student.merge_heads().eval()
    assert isinstance(merged.get_submodule(student.head_module), nn.Linear)
    inputs = batch(seed=1)
    with torch.no_grad():
        diff = (merged(**inputs).logits - student(**inputs).logits).abs().max().item()
    assert diff <= 1e-5
    # merging copies: the student still has its heads
    assert isinstance(student.head, MultiHeadLinear)


def test_each_head_equals_its_own_linear_layer():
    student = diverse_student("bert", num_heads=3)
    inputs = batch()
    with torch.no_grad():
        out = student(**inputs)
        for h in range(3):
            student.set_head_weights([1.0 if i == h else 0.0 for i in range(3)])
            torch.testing.assert_close(student(**inputs).logits, out.head_logits[:, h])


def test_merged_checkpoint_loads_without_tmkd_hf(tmp_path):
    student = diverse_student("roberta", num_heads=3, num_labels=2)
    student.set_head_weights([1.0, 2.0, 1.0])
    student.save_pretrained(tmp_path / "merged", merged=True)
    inputs = batch(seed=3)
    with torch.no_grad():
        expected = student(**inputs).logits
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "merged")!r}).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            torch.save(model(**inputs).logits, {str(tmp_path / "logits.pt")!r})
        assert not any(name.startswith("tmkd_hf") for name in sys.modules), "tmkd_hf was imported"
        print(type(model).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RobertaForSequenceClassification" in done.stdout
    got = torch.load(tmp_path / "logits.pt")
    assert (got - expected).abs().max().item() <= 1e-5


def test_checkpoint_keeps_every_head_and_reloads(tmp_path):
    student = diverse_student("distilbert", num_heads=3, num_labels=2)
    student.set_head_weights([3.0, 1.0, 1.0])
    student.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / STUDENT_CONFIG_NAME).read_text())
    assert meta["num_heads"] == 3 and meta["head_module"] == "classifier"
    reloaded = MultiHeadStudent.from_pretrained(tmp_path).eval()
    assert reloaded.num_heads == 3
    torch.testing.assert_close(reloaded.head_weights, torch.tensor([0.6, 0.2, 0.2]))
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).head_logits, student(**inputs).head_logits)
    with pytest.raises(ValueError, match="holds a student with 3 heads"):
        MultiHeadStudent.from_pretrained(tmp_path, num_teachers=2)
    with pytest.raises(ValueError, match="has 2 labels"):
        MultiHeadStudent.from_pretrained(tmp_path, num_labels=5)


def test_from_plain_checkpoint_replicates_the_head(tmp_path):
    plain = tiny_model("bert", num_labels=2, seed=3)
    plain.save_pretrained(tmp_path)
    student = MultiHeadStudent.from_pretrained(tmp_path, num_teachers=3, num_labels=2).eval()
    for h in range(3):
        torch.testing.assert_close(student.head.weight[h], plain.classifier.weight)
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(student(**inputs).logits, plain(**inputs).logits)
    with pytest.raises(ValueError, match="num_teachers"):
        MultiHeadStudent.from_pretrained(tmp_path)


def test_labels_give_a_loss_on_the_combined_logits():
    student = diverse_student("bert", num_heads=2, num_labels=3)
    labels = torch.tensor([0, 2, 1, -100])
    out = student(**batch(), labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:3], labels[:3])
    torch.testing.assert_close(out.loss, expected)


def test_head_weights_are_validated():
    student = diverse_student("bert", num_heads=3)
    with pytest.raises(ValueError, match="3 heads"):
        student.set_head_weights([1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        student.set_head_weights([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="not all zero"):
        student.set_head_weights([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadStudent(tiny_model("bert"), 0)


def test_unknown_head_is_a_clear_error_and_can_be_named():
    model = tiny_model("bert", num_labels=2)
    with pytest.raises(ValueError, match="head_module"):
        find_classification_head(model, num_labels=7)
    student = MultiHeadStudent(tiny_model("bert", num_labels=2), 2, head_module="classifier")
    assert student.head.num_heads == 2
    with pytest.raises(ValueError, match="expected the final nn.Linear"):
        MultiHeadStudent(tiny_model("bert", num_labels=2), 2, head_module="bert.encoder")


def test_merged_model_is_a_plain_transformers_model(tmp_path):
    student = diverse_student("mpnet", num_heads=2, num_labels=2)
    merged = student.merge_heads()
    merged.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(again).__name__ == "MPNetForSequenceClassification"
    assert not (tmp_path / STUDENT_CONFIG_NAME).exists()


def test_a_truncated_multi_head_checkpoint_names_its_weights_file(tmp_path):
    MultiHeadStudent(tiny_model("bert"), 3).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(OSError, match=rf"{re.escape(str(weights))} is damaged \(1000 bytes"):
        MultiHeadStudent.from_pretrained(str(tmp_path))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(weights))} is missing"):
        MultiHeadStudent.from_pretrained(str(tmp_path))


def test_multi_head_checkpoint_applies_or_refuses_every_from_pretrained_keyword(tmp_path):
    MultiHeadStudent(tiny_model("bert"), 3).save_pretrained(tmp_path)
    labels = {0: "no", 1: "yes"}
    student = MultiHeadStudent.from_pretrained(str(tmp_path), id2label=labels, label2id={"no": 0, "yes": 1},
                                               torch_dtype=torch.bfloat16, cache_dir="/unused", revision="main")
    assert student.config.id2label == labels and student.config.label2id == {"no": 0, "yes": 1}
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in MultiHeadStudent.from_pretrained(str(tmp_path), dtype="float16").parameters()} == {
        torch.float16}
    with pytest.raises(ValueError, match=r"revision='v2' cannot be applied \(a local directory has no revisions\)"):
        MultiHeadStudent.from_pretrained(str(tmp_path), revision="v2")
    with pytest.raises(ValueError, match=r"\['attn_implementation', 'ignore_mismatched_size'\] cannot be applied"):
        MultiHeadStudent.from_pretrained(str(tmp_path), ignore_mismatched_size=True, attn_implementation="eager")


def imported_modules(path) -> set[str]:
    """The modules a source file imports (relative ones as `.name`), at any depth, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_the_student_module_knows_nothing_of_lora():
    """LoRA builds on the multi-head student (tmkd_hf.peft_student imports tmkd_hf.modeling), never the reverse."""
    modeling = imported_modules(Path(tmkd_hf.modeling.__file__))
    assert not {m for m in modeling if "peft" in m}, modeling
    assert ".modeling" in imported_modules(Path(tmkd_hf.peft_student.__file__))


def test_teachers_build_on_the_student_module_and_hub_ids_have_one_home():
    """tmkd_hf.teachers loads students (it imports tmkd_hf.modeling), never the reverse; both read what a Hub id
    looks like from tmkd_hf.hub_id."""
    modeling = imported_modules(Path(tmkd_hf.modeling.__file__))
    assert not {m for m in modeling if m.endswith("teachers")}, modeling
    assert ".modeling" in imported_modules(Path(tmkd_hf.teachers.__file__))
    assert tmkd_hf.modeling.HUB_ID is tmkd_hf.teachers.HUB_ID is tmkd_hf.hub_id.HUB_ID
    assert tmkd_hf.hub_id.HUB_ID.fullmatch("namespace/name") and not tmkd_hf.hub_id.HUB_ID.fullmatch("a/b/c")
