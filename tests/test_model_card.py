"""The student model card: data -> template -> `ModelCard`, and what the trainer gathers during a run (offline)."""

from __future__ import annotations

import pytest
from conftest import pair_dataset, tiny_model, tokenize
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification

from tmkd_hf import DistillationArguments, MultiHeadStudent, MultiTeacherDistillationTrainer, label_with_teachers
from tmkd_hf.arguments import DISTILLATION_FIELDS
from tmkd_hf.model_card import (
    BaselineResult,
    FormatSpeed,
    SpeedMeasurement,
    StudentCardData,
    TeacherInfo,
    non_default_hyperparameters,
    render_model_card,
    write_model_card,
)


def full_card_data() -> StudentCardData:
    return StudentCardData(
        model_id="me/tmkd-minilm-qnli",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        license="apache-2.0",
        language="en",
        dataset_id="nyu-mll/glue",
        dataset_config="qnli",
        dataset_name="GLUE QNLI",
        eval_results={"validation": {"accuracy": 0.575}, "test": {"accuracy": 0.58, "f1": 0.61}},
        teachers=[
            TeacherInfo("me/teacher-0", revision="v1", metrics={"validation": {"accuracy": 0.801}}),
            TeacherInfo("/data/runs/teacher-1", weights_sha256="abcdef0123456789"),
        ],
        baselines=[BaselineResult("teacher ensemble", "mean of probabilities", {"test": {"accuracy": 0.755}})],
        stage="stage 1 + stage 2",
        distillation={"alpha": 0.5, "temperature": 2.0, "soft_loss": "kl", "teacher_weights": [0.5, 0.5]},
        num_parameters=17_390_594,
        num_layers=3,
        speed=SpeedMeasurement(
            student_examples_per_second=156.8, teacher_examples_per_second=79.2, hardware="2 CPU cores (shared)"
        ),
    )


def test_card_metadata_and_model_index_round_trip(tmp_path):
    data = full_card_data()
    write_model_card(tmp_path, data)
    card = ModelCard.load(tmp_path / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert {"knowledge-distillation", "tmkd"} <= set(meta["tags"])
    assert meta["datasets"] == ["nyu-mll/glue"] and meta["license"] == "apache-2.0" and meta["language"] == "en"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    parsed = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert parsed == {("validation", "accuracy"): 0.575, ("test", "accuracy"): 0.58, ("test", "f1"): 0.61}
    assert card.data.model_name == "tmkd-minilm-qnli"
    text = card.text
    assert "| **this model** | student | 17,390,594 | 0.575 | 0.58 | 0.61 |" in text
    assert "[me/teacher-0](https://huggingface.co/me/teacher-0)" in text and "revision `v1`" in text
    assert "0.801" in text and "0.755" in text
    assert "`teacher-1`" in text and "/data/runs" not in text  # local paths are shown by name and weights hash
    assert "**1.98x**" in text and "2 CPU cores (shared)" in text
    assert "stage 1 + stage 2" in text and "@inproceedings{yang2020tmkd" in text
    assert 'pipeline("text-classification", model="me/tmkd-minilm-qnli")' in text


def test_every_format_timed_is_one_row_and_an_onnx_export_gets_its_snippet(tmp_path):
    """The speed table's ratios are each format's throughput over the teacher's and the ensemble's; columns nobody
    filled are left out; an `onnx/onnx_export.json` beside the card adds the file list and the onnxruntime snippet."""
    import json

    data = full_card_data()
    data.speed.formats = [
        FormatSpeed("PyTorch fp32", 156.8, "torch 2.13.0", "model.safetensors", 69_600_000, 0.58),
        FormatSpeed("ONNX int8", 400.0, "onnxruntime 1.23", "onnx/model_int8.onnx", 17_500_000, 0.576),
    ]
    text = render_model_card(data).text
    assert "| format | runtime | file | size (MB) | examples/s | vs teacher | test accuracy |" in text  # no ensemble
    assert "| PyTorch fp32 | torch 2.13.0 | `model.safetensors` | 69.6 | 156.8 | 1.98x | 58.0 |" in text
    assert "| ONNX int8 | onnxruntime 1.23 | `onnx/model_int8.onnx` | 17.5 | 400 | 5.05x | 57.6 |" in text
    assert "ONNX (onnxruntime" not in text  # no export in the folder
    data.speed.ensemble_examples_per_second = 25.0
    data.speed.formats[1].accuracy = None
    text = render_model_card(data).text
    assert "| ONNX int8 | onnxruntime 1.23 | `onnx/model_int8.onnx` | 17.5 | 400 | 5.05x | 16.00x |  |" in text

    (tmp_path / "onnx").mkdir()
    info = {"files": {"fp32": "model.onnx", "int8": "model_int8.onnx"}, "size_bytes": {"fp32": 70e6, "int8": 18e6},
            "inputs": [{"name": "input_ids"}, {"name": "attention_mask"}], "opset": 17,
            "check": {"max_abs_logit_diff_vs_torch": {"fp32": 3e-7, "int8": 0.02}},
            "quantization": {"weight_type": "QInt8", "weight_type_choice": {
                "requested": "auto", "max_abs_logit_diff_vs_torch": {"QUInt8": 0.03, "QInt8": 0.02}}}}  # fmt: skip
    (tmp_path / "onnx" / "onnx_export.json").write_text(json.dumps(info))
    text = render_model_card(data, model_dir=tmp_path).text
    assert "- `onnx/model.onnx`: float32, 70.0 MB; max |logit difference| to PyTorch on the export's check batch: " \
           "3.0e-07" in text
    assert "- `onnx/model_int8.onnx`: signed int8 weights, chosen by `weight_type=\"auto\"` on the export's CPU " \
           "from the check batch's error (signed 2.0e-02, unsigned 3.0e-02) (onnxruntime dynamic quantization), " \
           "18.0 MB" in text
    info["quantization"] = {"weight_type": "QUInt8"}  # a fixed weight type: named, no choice to explain
    (tmp_path / "onnx" / "onnx_export.json").write_text(json.dumps(info))
    assert "- `onnx/model_int8.onnx`: unsigned int8 weights (onnxruntime dynamic quantization), 18.0 MB" in \
        render_model_card(data, model_dir=tmp_path).text
    assert 'onnxruntime.InferenceSession(f"{folder}/onnx/model_int8.onnx")' in text
    assert "for name in ['input_ids', 'attention_mask']" in text  # the graph's inputs only (no token_type_ids)


def test_absent_numbers_are_left_out():
    data = StudentCardData(teachers=[TeacherInfo("org/teacher")])
    card = render_model_card(data)
    assert "model-index" not in card.content and card.data.eval_results is None
    for absent in ("Evaluation results", "Inference speed", "Parameters", "None", "nan", "[More Information"):
        assert absent not in card.text, absent
    assert "\n\n\n" not in card.content


def test_add_eval_metrics_names_splits_and_skips_run_bookkeeping():
    data = StudentCardData()
    data.add_eval_metrics({"eval_loss": 0.7, "eval_accuracy": 0.5, "eval_runtime": 1.2, "epoch": 1.0})
    data.add_eval_metrics({"test_accuracy": 0.6, "test_loss_soft": 0.1, "test_samples_per_second": 9.0})
    data.add_eval_metrics({"eval_mnli_mm_accuracy": 0.4, "eval_mnli_mm_runtime": 1.0})
    data.add_eval_metrics({"eval_accuracy": 0.55, "eval_runtime": 1.0})  # a later evaluation replaces the earlier
    assert data.eval_results == {
        "validation": {"accuracy": 0.55},
        "test": {"accuracy": 0.6},
        "mnli_mm": {"accuracy": 0.4},
    }
    data.add_eval_metrics({"predict_accuracy": 0.65, "predict_runtime": 1.0})  # run_glue's prefix for the test set
    assert data.eval_results["test"] == {"accuracy": 0.65}


def test_hyperparameters_hide_paths_and_secrets(tmp_path):
    args = DistillationArguments(
        output_dir=str(tmp_path / "secret-path"),
        hub_token="hf_secret",
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        alpha=0.9,
    )
    hyper = non_default_hyperparameters(args)
    assert hyper["learning_rate"] == 1e-3
    assert "alpha" not in hyper  # shown under Distillation instead
    assert "secret" not in str(hyper)


def test_distillation_fields_are_shown_in_their_section_not_among_the_hyperparameters(tmp_path):
    args = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, alpha=0.9, temperature=4.0, soft_loss="soft_ce",
        t2_scaling=False, teacher_weights=[1, 3], teacher_aggregation="mean_probs", learning_rate=1e-3,
    )
    assert not set(DISTILLATION_FIELDS) & set(non_default_hyperparameters(args))
    trainer = MultiTeacherDistillationTrainer(model=tiny_model("bert"), args=args)
    shown = StudentCardData.from_trainer(trainer).distillation
    assert [key.split(" ")[0] for key in shown if key != "student heads"] == [
        "alpha", "soft_loss", "temperature", "t2_scaling", "teacher_weights", "teacher_aggregation"
    ]
    assert set(DISTILLATION_FIELDS) <= {key.split(" ")[0] for key in shown}
    assert shown["alpha (weight of the teacher loss)"] == 0.9 and shown["temperature"] == 4.0


def test_missing_template_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="template_path="):
        render_model_card(StudentCardData(), template_path=tmp_path / "nope.md")


def test_teachers_from_the_labelling_manifest():
    manifest = {
        "teachers": [{"name_or_path": "org/a", "revision": "v2"}, {"name_or_path": "/x/b", "weights_sha256": "f0"}]
    }
    teachers = TeacherInfo.from_manifest(manifest)
    assert [(t.name_or_path, t.revision) for t in teachers] == [("org/a", "v2"), ("/x/b", None)]
    assert teachers[1].weights_sha256 == "f0" and TeacherInfo.from_manifest(None) == []


def test_trainer_gathers_the_card_during_a_run(tmp_path, tokenizer, teacher_dirs):
    labelled = label_with_teachers(pair_dataset(24, seed=1), teacher_dirs, show_progress=False)
    train, dev = tokenize(labelled, tokenizer), tokenize(pair_dataset(16, seed=2), tokenizer)
    test = tokenize(pair_dataset(16, seed=3), tokenizer)
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        hub_token="hf_secret",
    )
    trainer = MultiTeacherDistillationTrainer(
        model=MultiHeadStudent(tiny_model("bert", seed=5), 3),
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train()
    measured = {
        "validation": trainer.evaluate()["eval_accuracy"],
        "test": trainer.predict(test).metrics["test_accuracy"],
    }
    trainer.save_model()
    # the arguments run_glue.py passes to create_model_card / push_to_hub
    card = trainer.create_model_card(
        language="en",
        license="apache-2.0",
        finetuned_from="google/bert_uncased_L-2_H-128_A-2",
        tasks="text-classification",
        dataset_tags="nyu-mll/glue",
        dataset_args="qnli",
        dataset="GLUE QNLI",
    )
    loaded = ModelCard.load(tmp_path / "out" / "README.md")
    assert loaded.content == card.content
    assert {r.dataset_split: r.metric_value for r in loaded.data.eval_results} == measured
    assert {(r.dataset_type, r.dataset_config) for r in loaded.data.eval_results} == {("nyu-mll/glue", "qnli")}
    assert loaded.data.base_model == "google/bert_uncased_L-2_H-128_A-2"
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert f"**Parameters:** {sum(p.numel() for p in merged.parameters()):,}" in loaded.text
    for i in range(3):
        assert f"| {i} | `teacher-{i}` | local, weights sha256" in loaded.text
    assert "student heads:** 3" in loaded.text and "`learning_rate`: 0.001" in loaded.text
    assert "steps: 2" in loaded.text
    assert "hf_secret" not in loaded.content and str(tmp_path) not in loaded.content
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['licence'\]; the model card takes language, license"):
        trainer.create_model_card(licence="apache-2.0")  # misspelt: refused, not a card without a licence
