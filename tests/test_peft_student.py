"""LoRA students: trainable set, exact merge (LoRA, then heads) into a plain model, training, checkpoints, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import pair_dataset, tiny_model, tokenize
from transformers import AutoModelForSequenceClassification, HfArgumentParser

from tmkd_hf import (
    DistillationArguments,
    LoraStudentArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    apply_lora,
    merge_lora,
    merge_student,
    save_merged_student,
)
from tmkd_hf.modeling import STUDENT_CONFIG_NAME
from tmkd_hf.peft_student import has_lora_layers

# modules trained in full per family, besides the LoRA matrices (the per-teacher head and the rest of the head)
FULLY_TRAINED = {
    "bert": ("model.bert.pooler.dense.", "model.classifier."),
    "roberta": ("model.classifier.dense.", "model.classifier.out_proj."),
    "distilbert": ("model.pre_classifier.", "model.classifier."),
    "mpnet": ("model.classifier.dense.", "model.classifier.out_proj."),
}


def batch(seed: int = 0, size: int = 4, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def lora_student(family="bert", num_heads=3, num_labels=2, lora=None, **config) -> MultiHeadStudent:
    student = MultiHeadStudent(tiny_model(family, num_labels=num_labels, seed=0, **config), num_heads)
    return apply_lora(student, LoraStudentArguments(use_peft=True, lora_r=4, **(lora or {})))


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """LoRA B starts at zero (a merge would be trivially exact): give B and the heads values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or ".classifier" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def test_arguments_checks_and_cli_parsing():
    for bad in ({"lora_r": 0}, {"lora_r": 2.5}, {"lora_alpha": 0}, {"lora_dropout": 1.0}, {"lora_target_modules": []}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LoraStudentArguments(**bad)
    assert LoraStudentArguments(lora_target_modules="query,value").lora_target_modules == ["query", "value"]
    (args,) = HfArgumentParser(LoraStudentArguments).parse_args_into_dataclasses(
        ["--use_peft", "--lora_r", "4", "--lora_target_modules", "query", "key", "--lora_modules_to_save", "none"]
    )
    assert args.use_peft and args.lora_r == 4 and args.lora_target_modules == ["query", "key"]
    assert args.lora_modules_to_save == []
    assert LoraStudentArguments.from_settings(args.to_settings()) == args


@pytest.mark.parametrize("family", sorted(FULLY_TRAINED))
def test_multihead_trainable_parameters_and_exact_merge(family):
    student = lora_student(family, num_heads=3, num_labels=3)
    assert isinstance(student, MultiHeadStudent) and student.lora_settings["use_peft"]
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert sorted(n for n in trainable if "lora_" not in n) == sorted(
        n for n, _ in student.named_parameters() if n.startswith(FULLY_TRAINED[family]) and "lora_" not in n
    )
    perturb(student)
    student.set_head_weights([0.2, 0.5, 0.3])
    student.eval()
    expected = student(**batch()).logits
    merged = merge_student(student).eval()
    assert type(merged).__name__.endswith("ForSequenceClassification") and not has_lora_layers(merged)
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    assert (merged(**batch()).logits - expected).abs().max().item() <= 1e-5
    # the student itself is untouched by the export, and merge_lora keeps every head
    assert has_lora_layers(student.model)
    kept = merge_lora(student).eval()
    assert isinstance(kept, MultiHeadStudent) and not has_lora_layers(kept.model)
    assert getattr(kept, "lora_settings", None) is None
    assert (kept(**batch()).head_logits - student(**batch()).head_logits).abs().max().item() <= 1e-5


def test_lora_student_with_more_heads_keeps_its_adapters_and_reloads(tmp_path):
    """A one-head LoRA student continued with one head per teacher stays a LoRA student: its checkpoint reloads with
    the same adapters, and its merged export is a plain model with its combined logits."""
    one = lora_student("bert", num_heads=1)
    perturb(one)
    many = one.with_heads(3).eval()
    assert many.num_heads == 3 and has_lora_layers(many.model) and many.lora_settings == one.lora_settings
    expected = many(**batch()).logits
    many.save_pretrained(tmp_path / "checkpoint")
    reloaded = MultiHeadStudent.from_pretrained(str(tmp_path / "checkpoint")).eval()
    assert has_lora_layers(reloaded.model) and reloaded.lora_settings == many.lora_settings
    torch.testing.assert_close(reloaded(**batch()).head_logits, many(**batch()).head_logits, atol=1e-6, rtol=0)
    merged = many.merge_heads().eval()
    assert not has_lora_layers(merged) and (merged(**batch()).logits - expected).abs().max().item() <= 1e-5


def test_plain_student_becomes_peft_model_and_merges_exactly():
    from peft import PeftModel

    model = apply_lora(tiny_model("bert", num_labels=2), LoraStudentArguments(lora_r=4))
    assert isinstance(model, PeftModel)
    extra = sorted(n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)
    assert extra and all("modules_to_save" in n and ("classifier" in n or "pooler" in n) for n in extra)
    perturb(model)
    model.eval()
    expected = model(**batch()).logits
    merged = merge_student(model).eval()
    assert not has_lora_layers(merged) and isinstance(merged, torch.nn.Module)
    assert (merged(**batch()).logits - expected).abs().max().item() <= 1e-5


def test_clear_errors():
    student = lora_student()
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(student)
    with pytest.raises(ValueError, match="match no layer.*query"):
        apply_lora(MultiHeadStudent(tiny_model(), 2), LoraStudentArguments(lora_target_modules=["nonexistent"]))
    with pytest.raises(ValueError, match="no such module"):
        apply_lora(MultiHeadStudent(tiny_model(), 2), LoraStudentArguments(lora_modules_to_save=["nowhere"]))
    with pytest.raises(TypeError, match="MultiHeadStudent or a transformers"):
        apply_lora(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already a PeftModel"):
        apply_lora(apply_lora(tiny_model()))


def distill_dataset(tokenizer, n: int = 48):
    logits = np.random.default_rng(0).normal(scale=3.0, size=(n, 3, 2)).astype(np.float32)
    return tokenize(pair_dataset(n, seed=0, with_labels=False).add_column("teacher_logits", logits.tolist()), tokenizer)


def distill_args(output_dir, **kwargs):
    defaults = dict(
        output_dir=str(output_dir),
        alpha=1.0,
        learning_rate=2e-2,
        num_train_epochs=4,
        per_device_train_batch_size=8,
        logging_steps=3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        save_strategy="no",
    )
    return DistillationArguments(**{**defaults, **kwargs})


def test_trainer_trains_lora_multihead_student_and_saves_merged(tmp_path, tokenizer):
    student = lora_student("bert", hidden_dropout_prob=0.0)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    trainer = MultiTeacherDistillationTrainer(
        model=student,
        args=distill_args(tmp_path / "out", num_train_epochs=3, save_strategy="steps", save_steps=12),
        train_dataset=distill_dataset(tokenizer, n=32),
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0], losses
    for name, before in frozen.items():
        torch.testing.assert_close(dict(student.named_parameters())[name], before, rtol=0, atol=0, msg=name)
    changed = {n for n, p in student.named_parameters() if n in trained and not torch.equal(p, trained[n])}
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)

    trainer.save_model()
    out = tmp_path / "out"
    assert (out / "config.json").is_file() and not (out / STUDENT_CONFIG_NAME).exists()
    keys = safetensors.torch.load_file(str(out / "model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)
    student.eval()
    inputs = batch(seed=3)
    expected = student(**inputs).logits.detach()
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert (plain(**inputs).logits - expected).abs().max().item() <= 1e-5

    # the final checkpoint keeps LoRA and every head, and reloads as the same LoRA student
    checkpoint = out / "checkpoint-12"
    meta = json.loads((checkpoint / STUDENT_CONFIG_NAME).read_text())
    assert meta["num_heads"] == 3 and meta["lora"]["lora_r"] == 4
    reloaded = MultiHeadStudent.from_pretrained(str(checkpoint)).eval()
    assert has_lora_layers(reloaded.model)
    assert [n for n, p in reloaded.named_parameters() if p.requires_grad] == list(trained)
    torch.testing.assert_close(reloaded(**inputs).head_logits, student(**inputs).head_logits, atol=1e-6, rtol=0)

    # the exported model loads in a process that has neither tmkd_hf nor peft imported
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "check.pt")
    code = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForSequenceClassification
        data = torch.load({str(tmp_path / "check.pt")!r})
        model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
        diff = (model(**data["inputs"]).logits - data["expected"]).abs().max().item()
        assert "tmkd_hf" not in sys.modules and "peft" not in sys.modules
        print(diff)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) <= 1e-5


def test_resume_from_lora_checkpoint_matches_uninterrupted_run(tmp_path, tokenizer):
    data = distill_dataset(tokenizer, n=16)

    """16 rows, batch 8, 2 epochs: 4 steps, checkpoint-2 after the first epoch. The resumed run starts from other
    trainable weights, so it can only end on the uninterrupted run's weights by loading the checkpoint (weights,
    optimizer, step), and it takes steps 3 and 4 only (a resume that did nothing would retrain all 4 steps)."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def __init__(self):
            self.taken = []

        def on_step_end(self, args, state, control, **kwargs):
            self.taken.append(state.global_step)

    def run(output_dir, resume=None):
        student = lora_student(
            "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, lora={"lora_dropout": 0.0}
        )
        if resume is not None:
            with torch.no_grad():  # not the weights the uninterrupted run started from
                for param in student.parameters():
                    if param.requires_grad:
                        param.add_(torch.randn_like(param) * 0.5)
        steps = Steps()
        trainer = MultiTeacherDistillationTrainer(
            model=student,
            args=distill_args(output_dir, num_train_epochs=2, save_strategy="epoch"),
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[steps],
        )
        trainer.train(resume_from_checkpoint=resume)
        assert trainer.state.global_step == 4
        return {n: p.detach().clone() for n, p in student.named_parameters()}, steps.taken

    full, full_steps = run(tmp_path / "full")
    assert full_steps == [1, 2, 3, 4]
    resumed, resumed_steps = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed_steps == [3, 4]  # continues from the checkpoint's step
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_plain_peft_student_through_trainer_and_export(tmp_path, tokenizer):
    data = distill_dataset(tokenizer, n=16)
    model = apply_lora(tiny_model("bert", seed=0), LoraStudentArguments(lora_r=4))
    trainer = MultiTeacherDistillationTrainer(
        model=model,
        args=distill_args(tmp_path / "out", num_train_epochs=1),
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    model.eval()
    expected = model(**batch()).logits
    # The trainer's final save merges the LoRA student (Trainer alone would write the adapter only);
    # save_merged_student does the same outside a trainer.
    assert not (tmp_path / "out" / "adapter_config.json").is_file()
    save_merged_student(model, tmp_path / "merged", tokenizer)
    for path in (tmp_path / "out", tmp_path / "merged"):
        plain = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        assert not has_lora_layers(plain)
        assert (plain(**batch()).logits - expected).abs().max().item() <= 1e-5
