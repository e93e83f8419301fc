"""The shipped split-recipe configs (stage 1, then stage 2, from the pipeline's teachers) train the student the
built-in pipeline trains: same student layers, epochs, learning rates, loss and batch settings. Each file is parsed by
its own recipe's parser, so the values compared are the ones a run would use, defaults included."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


@pytest.fixture(scope="module")
def pipeline():
    return load_recipe("run_tmkd_pipeline").parse_args([str(CONFIGS / "pipeline_default.json")])


def shared_settings(training_args, max_length: int) -> dict:
    return {
        "temperature": training_args.temperature,
        "soft_loss": training_args.soft_loss,
        "batch_size": training_args.per_device_train_batch_size,
        "warmup_steps": training_args.warmup_steps,
        "weight_decay": training_args.weight_decay,
        "group_by_length": training_args.train_sampling_strategy == "group_by_length",
        "seed": training_args.seed,
        "max_length": max_length,
    }


def pipeline_shared(pipeline) -> dict:
    return {key: getattr(pipeline, key) for key in
            ("temperature", "soft_loss", "batch_size", "warmup_steps", "weight_decay", "group_by_length", "seed",
             "max_length")}


@pytest.mark.parametrize("name", ["stage1_qnli.json", "stage1_qnli_lora.json"])
def test_stage1_configs_train_the_pipelines_stage1(pipeline, name):
    recipe = load_recipe("run_qa_distill_pretrain")
    model_args, data_args, training_args, lora_args = recipe.parse_args([str(CONFIGS / name)])
    assert list(model_args.student_layers) == list(pipeline.student_layers)
    assert training_args.num_train_epochs == pipeline.stage1_epochs
    assert training_args.alpha == 1.0  # stage 1: soft labels only
    assert shared_settings(training_args, data_args.max_seq_length) == pipeline_shared(pipeline)
    if lora_args.use_peft:  # LoRA trains a few adapter weights: a higher learning rate is the point
        assert training_args.learning_rate > pipeline.stage1_learning_rate
    else:
        assert training_args.learning_rate == pipeline.stage1_learning_rate


def test_stage2_config_trains_the_pipelines_stage2(pipeline):
    config = str(CONFIGS / "glue_qnli_distill.json")
    model_args, data_args, training_args, _ = load_recipe("run_glue_distill").parse_args([config])
    assert model_args.per_teacher_heads is True and len(model_args.teachers) == len(pipeline.teacher_seeds)
    assert training_args.num_train_epochs == pipeline.stage2_epochs
    assert training_args.learning_rate == pipeline.stage2_learning_rate
    assert training_args.alpha == pipeline.stage2_alpha
    assert shared_settings(training_args, data_args.max_seq_length) == pipeline_shared(pipeline)
