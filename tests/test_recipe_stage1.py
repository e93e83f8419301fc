"""recipes/run_qa_distill_pretrain.py (TMKD stage 1): a multi-head student from soft labels only, saved for stage 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import count_label_shards, pair_dataset
from conftest import load_recipe as load_script
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tmkd_hf import MultiHeadStudent, label_with_teachers, load_teacher_logits
from tmkd_hf.modeling import STUDENT_CONFIG_NAME
from tmkd_hf.soft_label_cache import LOCK_NAME

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "run_qa_distill_pretrain.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TRAIN_FLAGS = {
    "num_train_epochs": 2,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "learning_rate": 5e-3,
    "logging_steps": 2,
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
    "seed": 0,
}


def load_recipe():
    return load_script("run_qa_distill_pretrain")


def write_pool(path: Path, n: int = 40) -> None:
    """A TSV pool as GLUE ships it (quotes inside sentences, no quoting), with a label column stage 1 must ignore."""
    ds = pair_dataset(n, seed=5)
    lines = ["idx\tquestion\tsentence\tlabel"]
    lines += [f'{i}\t{q}\t{s} "quoted"\tnot_a_label' for i, (q, s) in enumerate(zip(ds["question"], ds["sentence"]))]
    path.write_text("\n".join(lines) + "\n")


def flags(config: dict) -> list[str]:
    out = []
    for key, value in config.items():
        out.append(f"--{key}")
        out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out


def run(cmd, cwd):
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def check_outputs(out: Path, teacher_dir: str, num_heads: int = 3) -> MultiHeadStudent:
    """The multi-head dir reloads with every head; merged/ is a plain model with the same logits and labels."""
    assert (out / STUDENT_CONFIG_NAME).is_file()
    student = MultiHeadStudent.from_pretrained(str(out)).eval()
    assert student.num_heads == num_heads
    assert not any("lora" in k for k in safetensors.torch.load_file(str(out / "model.safetensors")))
    merged = AutoModelForSequenceClassification.from_pretrained(str(out / "merged")).eval()
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    assert merged.config.id2label == teacher.config.id2label == student.config.id2label
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    inputs = tokenizer(
        ["who wrote the book", "where is the river"], ["the king wrote it", "north"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        combined, plain = student(**inputs).logits, merged(**inputs).logits
    assert (combined - plain).abs().max().item() <= 1e-5
    return student


def test_stage1_recipe_teachers_on_the_fly_then_rerun_reuses_cache(tmp_path, teacher_dirs, monkeypatch):
    write_pool(tmp_path / "pool.tsv")
    out = tmp_path / "stage1"
    config = {
        "dataset": str(tmp_path / "pool.tsv"),
        "teachers": teacher_dirs,
        "student_layers": [0],
        "student_init_from": teacher_dirs[0],
        "output_dir": str(out),
        "validation_split_percentage": 25,
        "labelling_shard_size": 16,
        "save_strategy": "no",
        **TRAIN_FLAGS,
    }
    (tmp_path / "stage1.json").write_text(json.dumps(config))
    run([sys.executable, str(RECIPE), str(tmp_path / "stage1.json")], tmp_path)

    student = check_outputs(out, teacher_dirs[0])
    assert student.config.num_hidden_layers == 1
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_samples"] == 30 and results["eval_samples"] == 10
    assert 0.0 <= results["eval_teacher_agreement"] <= 1.0 and "eval_teacher_2_agreement" in results
    assert results["eval_loss"] > 0
    losses = [
        log["loss"] for log in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in log
    ]
    assert losses[-1] < losses[0], losses
    manifest = out / "teacher_logits" / "tmkd_manifest.json"
    assert json.loads(manifest.read_text())["num_rows"] == 40
    created = manifest.read_text()

    cache_files = [p for p in (out / "teacher_logits").rglob("*") if p.is_file() and p.name != LOCK_NAME]
    stamps = {p.relative_to(out): p.stat().st_mtime_ns for p in cache_files}  # the lock is taken by every run

    # a rerun with the same pool and teachers (command-line flags this time) reuses the soft labels: no teacher
    # forward at all (the manifest's "created" has 1 s resolution, so an equal manifest alone would not show it)
    shards = count_label_shards(monkeypatch)
    load_recipe().main(flags({**config, "num_train_epochs": 1}))
    assert shards == []  # not relabelled
    assert manifest.read_text() == created
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps  # every file of the cache left as it was
    check_outputs(out, teacher_dirs[0])


def test_stage1_recipe_with_lora_from_a_labelled_dir(tmp_path, teacher_dirs, tokenizer):
    labelled_dir = tmp_path / "labelled"
    label_with_teachers(pair_dataset(24, seed=7), teacher_dirs, output_dir=labelled_dir, show_progress=False)
    out = tmp_path / "stage1-lora"
    metrics = load_recipe().main(
        flags(
            {
                "teacher_logits_dir": str(labelled_dir),
                "model_name_or_path": teacher_dirs[1],
                "output_dir": str(out),
                "use_peft": True,
                "lora_r": 4,
                "save_strategy": "epoch",
                **TRAIN_FLAGS,
            }
        )
    )
    assert metrics["train_samples"] == 24  # the labelled pool's label column is ignored, every row trains
    student = check_outputs(out, teacher_dirs[1])  # LoRA already folded into the encoder: a plain multi-head dir
    assert "lora" not in json.loads((out / STUDENT_CONFIG_NAME).read_text())
    checkpoint = json.loads((out / "checkpoint-6" / STUDENT_CONFIG_NAME).read_text())
    assert checkpoint["lora"]["lora_r"] == 4  # training checkpoints keep the adapters (resumable)
    assert student.config.num_hidden_layers == 2

    # a LoRA checkpoint as the starting student continues with its own adapters
    again = tmp_path / "stage1-continued"
    flags_again = {
        "teacher_logits_dir": str(labelled_dir),
        "model_name_or_path": str(out / "checkpoint-6"),
        "tokenizer_name": teacher_dirs[1],
        "output_dir": str(again),
        "use_peft": True,
        "save_strategy": "no",
        **TRAIN_FLAGS,
        "num_train_epochs": 1,
    }
    load_recipe().main(flags(flags_again))
    check_outputs(again, teacher_dirs[1])


def test_stage1_recipe_augments_the_pool_before_the_teachers_label_it(tmp_path, teacher_dirs):
    write_pool(tmp_path / "pool.tsv", n=12)
    out = tmp_path / "stage1"
    config = {"dataset": str(tmp_path / "pool.tsv"), "teachers": teacher_dirs, "student_layers": [0],
              "student_init_from": teacher_dirs[0], "output_dir": str(out), "save_strategy": "no",
              "augment_copies": 2, "augment_replace_prob": 0.5, **TRAIN_FLAGS}
    load_recipe().main(flags(config))
    manifest = json.loads((out / "teacher_logits" / "tmkd_manifest.json").read_text())
    assert manifest["num_rows"] == 36  # 12 rows + 2 augmented copies, all labelled by the teachers
    assert json.loads((out / "all_results.json").read_text())["train_samples"] == 36
    labelled = load_teacher_logits(str(out / "teacher_logits"))
    original, copies = list(labelled["sentence"][:12]), list(labelled["sentence"][12:])
    assert original == [s for s in pair_dataset(12, seed=5)["sentence"] for s in [f'{s} "quoted"']]
    assert sum(a != b for a, b in zip(copies, original * 2)) > 12  # most copies changed some words
    check_outputs(out, teacher_dirs[0])


def test_stage1_recipe_errors(tmp_path, teacher_dirs):
    recipe = load_recipe()
    write_pool(tmp_path / "pool.tsv", n=8)
    base = {"dataset": str(tmp_path / "pool.tsv"), "output_dir": str(tmp_path / "out"), "use_cpu": True}
    student = {"model_name_or_path": teacher_dirs[0]}
    cases = [
        ({**base, **student}, "give --teachers"),
        ({**base, **student, "teachers": teacher_dirs, "teacher_logits_dir": str(tmp_path)}, "not both"),
        ({**base, "teachers": teacher_dirs}, "No student"),
        ({**base, **student, "teachers": teacher_dirs, "alpha": 0.5}, "alpha must be 1.0"),
        ({**base, **student, "teachers": teacher_dirs, "text_columns": ["q", "sentence"]}, r"no column \['q'\]"),
        ({**base, **student, "teachers": teacher_dirs, "dataset": str(tmp_path / "nope.tsv")}, "does not exist"),
        ({**base, **student, "teacher_logits_dir": str(tmp_path)}, "no finished teacher-logits cache"),
        ({**base, **student, "teachers": teacher_dirs, "validation_split_percentage": 100}, "validation_split"),
        ({**base, **student, "teachers": teacher_dirs, "use_peft": True, "lora_r": 0}, "lora_r"),
        ({**base, **student, "teacher_logits_dir": str(tmp_path), "augment_copies": 1}, "already labelled"),
        ({**base, **student, "teachers": teacher_dirs, "augment_copies": -1}, "augment_copies must be >= 0"),
        ({**base, "model_name_or_path": "/no/student", "teachers": teacher_dirs}, "--model_name_or_path '/no/student'"),
        ({**base, **student, "teachers": [teacher_dirs[0], "./t1"]}, r"--teachers \[1\]: teacher './t1'"),
    ]
    for config, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            recipe.main(flags(config))


@pytest.mark.parametrize("name", ["stage1_qnli.json", "stage1_qnli_lora.json"])
def test_shipped_configs_parse(name):
    config = RECIPE.parent / "configs" / name
    model_args, data_args, training_args, lora_args = load_recipe().parse_args([str(config)])
    assert training_args.alpha == 1.0 and len(model_args.teachers) == 3 and data_args.dataset.endswith(".tsv")
    assert lora_args.use_peft == name.endswith("_lora.json")


@pytest.mark.slow
def test_stage1_recipe_under_accelerate_two_processes(tmp_path, teacher_dirs):
    write_pool(tmp_path / "pool.tsv", n=37)
    out = tmp_path / "ddp"
    config = {
        "dataset": str(tmp_path / "pool.tsv"),
        "teachers": teacher_dirs,
        "student_layers": [0, 1],
        "student_init_from": teacher_dirs[0],
        "output_dir": str(out),
        "validation_split_percentage": 20,
        "labelling_shard_size": 5,
        "save_strategy": "epoch",
        "use_peft": True,
        **TRAIN_FLAGS,
    }
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29537"]
    done = run([*launch, str(RECIPE), *flags(config)], tmp_path)
    assert "distributed training: True" in done.stdout + done.stderr
    check_outputs(out, teacher_dirs[0])
    state = json.loads((out / "trainer_state.json").read_text())
    # 30 training rows, 2 processes x batch 8 = 16 rows per step: 2 steps per epoch, 2 epochs
    assert state["global_step"] == 4
    labelled = json.loads((out / "teacher_logits" / "tmkd_manifest.json").read_text())
    assert labelled["num_rows"] == 37
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 8
