"""`recipes/run_tmkd_pipeline.py` end to end on a tiny backbone and a few dozen rows of the shipped QNLI slices."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from tmkd_hf import MultiHeadStudent

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "recipes", "run_tmkd_pipeline.py")
DEFAULT_CONFIG = os.path.join(REPO, "recipes", "configs", "pipeline_default.json")
MODELS = ["teacher_0", "teacher_1", "teacher_2", "teacher_ensemble", "tmkd_student", "tmkd_stage1_only",
          "labels_only_student", "majority_class"]
CROSS_ENCODER_LOGITS = """
import json, sys
import numpy as np
from sentence_transformers import CrossEncoder
assert "tmkd_hf" not in sys.modules
pairs = json.loads(sys.argv[2])
print(json.dumps(CrossEncoder(sys.argv[1]).predict(pairs, batch_size=8).tolist()))
assert not any(m.startswith("tmkd_hf") for m in sys.modules)
"""


def mark_mean_pooled(path: str) -> None:
    """Make a bare encoder directory look like a sentence-transformers model trained with mean pooling."""
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True}, f)
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}], f)


def load_recipe():
    spec = importlib.util.spec_from_file_location("run_tmkd_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_backbone(tmp_path, tokenizer):
    """A bare 4-layer BERT encoder (no classification head, like all-MiniLM-L6-v2) with the tiny tokenizer."""
    config = tiny_config("bert")
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    path = tmp_path / "backbone"
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_student_backbone(tmp_path, tokenizer):
    """Another bare BERT encoder (3 layers, other weights) the student's layers come from, as BERT-base under
    BERT-large teachers in the paper-scale config."""
    config = tiny_config("bert")
    config.num_hidden_layers = 3
    torch.manual_seed(1)
    path = tmp_path / "student_backbone"
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("readout", ["cls", "mean"])
def test_pipeline_end_to_end_on_a_tiny_backbone(tmp_path, tiny_backbone, tiny_student_backbone, readout):
    if readout == "mean":  # both backbones say they were trained with mean pooling: every model reads the mean
        mark_mean_pooled(tiny_backbone)
        mark_mean_pooled(tiny_student_backbone)
    out = tmp_path / "out"
    config = {
        "backbone": tiny_backbone,
        "student_backbone": tiny_student_backbone,
        "output_dir": str(out),
        "max_train_rows": 48,
        "max_unlabeled_rows": 48,
        "max_eval_rows": 24,
        "teacher_epochs": 1,
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "student_layers": [0, 2],
        "batch_size": 8,
        "speed_repeats": 1,
        "logging_steps": 2,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    # Run from another directory: the default data_dir "data/qnli" is found in the repository.
    proc = subprocess.run([sys.executable, SCRIPT, str(config_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    check_progress_lines(proc.stdout + proc.stderr, ["teacher_0", "teacher_1", "teacher_2", "labelling", "stage1",
                                                     "stage2", "labels_only", "evaluation", "speed", "results"])

    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"task", "accuracy", "parameters", "speed", "seconds", "paths", "config", "environment"}
    assert results["task"]["rows"] == {"train": 48, "validation": 24, "test": 24, "unlabeled": 48}
    assert results["task"]["label_names"] == ["entailment", "not_entailment"]
    for split in ("validation", "test"):
        assert set(results["accuracy"][split]) == set(MODELS)
        assert all(0.0 <= v <= 1.0 for v in results["accuracy"][split].values())
    # no group_column: no ranking metrics (tests/test_pipeline_ranking.py runs the pipeline with one)
    assert "map" not in results and "mrr" not in results and "group_column" not in results["task"]
    speed = results["speed"]
    assert speed["teacher_examples_per_s"] > 0 and speed["student_examples_per_s"] > 0
    assert speed["speedup"] == pytest.approx(speed["student_examples_per_s"] / speed["teacher_examples_per_s"], 0.02)
    # three teachers one after the other take longer than one
    assert speed["ensemble_examples_per_s"] < speed["teacher_examples_per_s"]
    assert speed["speedup_vs_ensemble"] > speed["speedup"]
    # ... and every throughput is the test rows over the pass time measured for it (speed_repeats 1: one pass each)
    assert speed["examples"] == results["task"]["rows"]["test"] == 24 and speed["repeats"] == 1
    measured = speed["seconds_per_pass"]
    assert set(measured) == {"teacher_0", "teacher_1", "teacher_2", "teacher_ensemble", "tmkd_student"}
    assert all(len(times) == 1 and 0 < times[0] < results["seconds"]["total"] for times in measured.values())
    teachers_in_a_row = sum(measured[f"teacher_{i}"][0] for i in range(3))
    assert measured["teacher_ensemble"][0] == pytest.approx(teachers_in_a_row, abs=3e-6)
    reported = [("teacher_0", speed["teacher_examples_per_s"]), ("tmkd_student", speed["student_examples_per_s"]),
                ("teacher_ensemble", speed["ensemble_examples_per_s"]), *speed["examples_per_s"].items()]  # fmt: skip
    for name, per_s in reported:
        assert per_s == pytest.approx(24 / measured[name][0], rel=1e-3, abs=0.06), name
    params = results["parameters"]
    assert params["teacher_layers"] == 4 and params["student_layers"] == 2 and params["student"] < params["teacher"]
    assert set(results["seconds"]) >= {"teacher_0", "labelling", "stage1", "stage2", "labels_only", "total"}
    assert all(0.0 <= p <= 1.0 for p in results["tmkd_vs_labels_only_mcnemar_p"].values())
    markdown = (out / "results.md").read_text()
    assert "| tmkd_student |" in markdown and "| labels_only_student |" in markdown and "| majority_class |" in markdown
    assert results["readout"] == readout
    majority = results["majority_label"]
    raw_test = load_recipe().read_tsv(os.path.join(REPO, "data", "qnli", "test.tsv"), ["label"], 24)
    assert results["accuracy"]["test"]["majority_class"] == pytest.approx(
        np.mean([v == majority for v in raw_test["label"]]), abs=1e-4)
    # accuracy_vs_speed.png beside results.md and in the student's folder, whose card embeds it
    student_folder = Path(results["paths"]["student"])
    for folder in (out, student_folder):
        assert (folder / "accuracy_vs_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", folder
    assert "![accuracy vs speed](accuracy_vs_speed.png)" in (student_folder / "README.md").read_text()
    assert set(speed["examples_per_s"]) == {"teacher_0", "teacher_1", "teacher_2", "teacher_ensemble", "tmkd_student"}
    if readout == "mean":
        check_cross_encoder_exports(results, env)
        return

    # The exported student is a plain transformers checkpoint with the task's labels ...
    student = AutoModelForSequenceClassification.from_pretrained(results["paths"]["student"]).eval()
    assert student.config.num_hidden_layers == 2
    # ... whose layers came from the student backbone (its layer 2 became the student's layer 1; a few training steps
    # moved it only a little), not from the teachers' backbone
    trained = student.bert.encoder.layer[1].output.dense.weight
    for backbone, expected_close in ((tiny_student_backbone, True), (tiny_backbone, False)):
        source = AutoModel.from_pretrained(backbone).encoder.layer[2].output.dense.weight
        assert ((trained - source).abs().max().item() < 0.01) == expected_close
    assert student.config.id2label == {0: "entailment", 1: "not_entailment"}
    # ... and its reported accuracy is what it scores on those validation rows.
    recipe = load_recipe()
    tokenizer = AutoTokenizer.from_pretrained(results["paths"]["student"])
    raw = recipe.read_tsv(os.path.join(REPO, "data", "qnli", "validation.tsv"), ["question", "sentence", "label"], 24)
    labels = np.array([results["task"]["label_names"].index(v) for v in raw["label"]])
    logits = recipe.predict_logits(student, tokenizer, recipe.encode(tokenizer, raw, ["question", "sentence"], 128), 8)
    assert results["accuracy"]["validation"]["tmkd_student"] == pytest.approx(recipe.accuracy(logits, labels), abs=1e-4)

    # The exported student carries a model card whose numbers are this run's.
    from huggingface_hub import ModelCard

    card = ModelCard.load(results["paths"]["student"] + "/README.md")
    assert {"knowledge-distillation", "tmkd"} <= set(card.data.tags)
    reported = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for split in ("validation", "test"):
        assert reported[(split, "accuracy")] == pytest.approx(results["accuracy"][split]["tmkd_student"])
    assert card.data.datasets == ["nyu-mll/glue"]
    assert f"{results['speed']['speedup']:.2f}" in card.text or f"{results['speed']['speedup']}" in card.text
    assert (out / "model_card.md").read_text() == str(card)

    # Stage 1 kept every head for stage 2; the labelled pools carry one row of logits per teacher.
    stage1 = MultiHeadStudent.from_pretrained(results["paths"]["stage1_student"])
    assert stage1.num_heads == 3
    manifest = json.loads((out / "labelled" / "unlabeled" / "tmkd_manifest.json").read_text())
    assert len(manifest["teachers"]) == 3 and manifest["num_rows"] == 48
    for teacher in results["paths"]["teachers"]:
        assert AutoModelForSequenceClassification.from_pretrained(teacher).config.num_hidden_layers == 4


def check_progress_lines(log: str, steps: list[str]) -> None:
    """Every step logs a start and an end line, in order, with the elapsed seconds and what is left: no estimate
    before a step has finished, an estimate in seconds after, nothing left after the last."""
    found = []
    for i, step in enumerate(steps, 1):
        tag = re.escape(f"[step {i}/{len(steps)}] {step}")
        start = re.search(tag + r" started; elapsed ([\d.]+) s; remaining: (.*)", log)
        end = re.search(tag + r" finished in ([\d.]+) s; elapsed ([\d.]+) s; remaining: ~(\d+) s \(estimate: ", log)
        assert start and end, (step, log[-3000:])
        assert start.start() < end.start()
        found.append((float(start.group(1)), start.group(2), float(end.group(1)), float(end.group(2)),
                      int(end.group(3))))
    assert "no estimate yet" in found[0][1]
    assert all(text.startswith("~") and "(estimate: " in text for _, text, *_ in found[1:])
    elapsed = [t for start, _, _, end, _ in found for t in (start, end)]
    assert elapsed == sorted(elapsed) and all(end - start >= took - 0.11 for start, _, took, end, _ in found)
    assert found[-1][4] == 0  # after the last step nothing is left
    assert not re.search(r"\[step \d+/\d+\] (?!" + "|".join(steps) + r")\w+ started", log)  # no other steps


def test_speed_is_computed_from_the_measured_pass_times(monkeypatch):
    """measure_speed on stub models and a fake clock: each model's pass takes a known time (batches x its cost per
    batch x that repeat's slowdown), so every reported number has one right value. The ensemble's time is the sum of
    its teachers' times within a repeat (median 0.48 s here), not the sum of their medians (0.33 s)."""
    recipe = load_recipe()
    clock = [0.0]
    monkeypatch.setattr(recipe, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Stub:
        def __init__(self, cost_per_batch, slowdowns):
            self.cost, self.slowdowns, self.seen = cost_per_batch, slowdowns, []

        def eval(self):
            return self

        def __call__(self, **batch):
            self.seen.append(batch["rows"])
            timed_pass = (len(self.seen) - 2) // 3  # call 1 is the warm-up, then 3 batches a pass
            clock[0] += self.cost * (10.0 if timed_pass < 0 else self.slowdowns[timed_pass])

    models = {
        "teacher_0": Stub(0.02, [1, 4, 1.5]),  # passes 0.06, 0.24, 0.09 s: median 0.09 s
        "teacher_1": Stub(0.03, [4, 1, 1]),  # 0.36, 0.09, 0.09
        "teacher_2": Stub(0.05, [1, 1, 1]),  # 0.15, 0.15, 0.15: in a row 0.57, 0.48, 0.33 s
        "tmkd_student": Stub(0.01, [1, 1, 2]),  # 0.03, 0.03, 0.06
    }
    batches = {name: [{"rows": (name, i)} for i in range(3)] for name in models}  # 3 batches of 8 rows each
    speed = recipe.measure_speed(models, batches, ["teacher_0", "teacher_1", "teacher_2"], num_rows=24, repeats=3)

    for name, model in models.items():  # a warm-up batch, then 3 passes over the model's own batches
        assert model.seen == [(name, 0)] + [(name, i) for _ in range(3) for i in range(3)]
    expected_seconds = {"teacher_0": [0.06, 0.24, 0.09], "teacher_1": [0.36, 0.09, 0.09],
                        "teacher_2": [0.15, 0.15, 0.15], "teacher_ensemble": [0.57, 0.48, 0.33],
                        "tmkd_student": [0.03, 0.03, 0.06]}  # fmt: skip
    assert speed["seconds_per_pass"].keys() == expected_seconds.keys()
    for name, times in expected_seconds.items():
        assert speed["seconds_per_pass"][name] == pytest.approx(times), name
    assert speed["teacher_examples_per_s"] == 266.7  # 24 rows / 0.09 s
    assert speed["ensemble_examples_per_s"] == 50.0  # 24 / 0.48
    assert speed["student_examples_per_s"] == 800.0  # 24 / 0.03
    assert speed["speedup"] == 3.0 and speed["speedup_vs_ensemble"] == 16.0
    assert speed["examples_per_s"] == {"teacher_0": 266.7, "teacher_1": 266.7, "teacher_2": 160.0,
                                       "teacher_ensemble": 50.0, "tmkd_student": 800.0}  # fmt: skip


def test_default_config_matches_the_dataclass_defaults():
    """`python recipes/run_tmkd_pipeline.py` with no arguments runs the same as with the default config."""
    recipe = load_recipe()
    from_json = recipe.parse_args([DEFAULT_CONFIG])
    defaults = recipe.PipelineArguments()
    assert dataclasses.asdict(from_json) == dataclasses.asdict(defaults)
    with open(DEFAULT_CONFIG) as f:
        fields = {f.name for f in dataclasses.fields(recipe.PipelineArguments)}
        assert set(json.load(f)) == fields
    assert defaults.export_onnx is False


def test_flags_and_clear_errors():
    recipe = load_recipe()
    args = recipe.parse_args(["--stage2_alpha", "0.7", "--student_layers", "0", "3", "--teacher_seeds", "4", "5",
                              "--teacher_learning_rates", "1e-4", "2e-4"])
    assert args.stage2_alpha == 0.7 and args.student_layers == [0, 3] and args.teacher_seeds == [4, 5]
    with pytest.raises(ValueError, match="one entry per teacher"):
        recipe.parse_args(["--teacher_seeds", "1", "2", "--teacher_learning_rates", "1e-4"])
    with pytest.raises(ValueError, match="stage2_alpha must be in"):
        recipe.parse_args(["--stage2_alpha", "1.5"])
    with pytest.raises(ValueError, match="but .*'nope'.* are needed"):
        recipe.read_tsv(os.path.join(REPO, "data", "qnli", "unlabeled.tsv"), ["question", "nope"], None)


def test_flags_after_the_json_config_override_its_fields(tmp_path):
    recipe = load_recipe()
    path = os.path.join(REPO, "recipes", "configs", "pipeline_default.json")
    base = recipe.parse_args([path])
    args = recipe.parse_args([path, "--export_onnx", "true", "--student_layers", "0", "2", "--stage2_alpha", "0.3"])
    assert args.export_onnx is True and args.student_layers == [0, 2] and args.stage2_alpha == 0.3
    assert {k: v for k, v in asdict(args).items() if k not in ("export_onnx", "student_layers", "stage2_alpha")} == {
        k: v for k, v in asdict(base).items() if k not in ("export_onnx", "student_layers", "stage2_alpha")}
    assert base.export_onnx is False and base.student_layers != [0, 2]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seed": 3, "stage_2_alpha": 0.5}))
    with pytest.raises(ValueError, match=r"fields the pipeline does not know: \['stage_2_alpha'\]"):
        recipe.parse_args([str(bad), "--seed", "4"])
    with pytest.raises(ValueError, match="stage2_alpha must be in"):  # the checks still run on the merged config
        recipe.parse_args([path, "--stage2_alpha", "1.5"])


def test_paper_scale_config_parses():
    """The documented paper-scale run (not run here: BERT-large teachers from the Hub) is a valid config."""
    recipe = load_recipe()
    args = recipe.parse_args([os.path.join(REPO, "recipes", "configs", "pipeline_paper_scale.json")])
    assert args.backbone == "google-bert/bert-large-uncased"
    assert args.student_backbone == "google-bert/bert-base-uncased"
    assert len(args.teacher_seeds) == len(args.teacher_learning_rates) == 3


def test_mcnemar_p_value_matches_an_exact_binomial_test():
    from scipy.stats import binomtest

    recipe = load_recipe()
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(60) < rng.random(), rng.random(60) < rng.random()
        discordant = int(np.sum(a != b))
        expected = binomtest(int(np.sum(a & ~b)), discordant, 0.5).pvalue if discordant else 1.0
        assert recipe.mcnemar_p_value(a, b) == pytest.approx(expected)


def check_cross_encoder_exports(results: dict, env: dict) -> None:
    """Mean-readout teachers and students are exported as CrossEncoders that load without tmkd_hf and give the
    logits behind the reported accuracies."""
    recipe = load_recipe()
    raw = recipe.read_tsv(os.path.join(REPO, "data", "qnli", "validation.tsv"), ["question", "sentence", "label"], 24)
    labels = np.array([results["task"]["label_names"].index(v) for v in raw["label"]])
    pairs = [[q, a] for q, a in zip(raw["question"], raw["sentence"])]
    for name, path in (("tmkd_student", results["paths"]["student"]),
                       ("labels_only_student", results["paths"]["labels_only_student"]),
                       ("teacher_1", results["paths"]["teachers"][1])):
        assert os.path.isfile(os.path.join(path, "modules.json")), name
        assert not os.path.isfile(os.path.join(path, "tmkd_student.json")), name
        proc = subprocess.run([sys.executable, "-c", CROSS_ENCODER_LOGITS, path, json.dumps(pairs)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logits = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
        assert logits.shape == (24, 2)
        reloaded = MultiHeadStudent.from_pretrained(path).eval()
        assert reloaded.readout == "mean" and reloaded.num_heads == 1
        tokenizer = AutoTokenizer.from_pretrained(path)
        features = recipe.encode(tokenizer, raw, ["question", "sentence"], 128)
        ours = recipe.predict_logits(reloaded, tokenizer, features, 8)
        np.testing.assert_allclose(logits, ours, atol=1e-5)
        assert results["accuracy"]["validation"][name] == pytest.approx(recipe.accuracy(logits, labels), abs=1e-4)
    from huggingface_hub import ModelCard

    card = ModelCard.load(results["paths"]["student"] + "/README.md")
    assert card.data.library_name == "sentence-transformers"
    assert "from sentence_transformers import CrossEncoder" in card.text
    assert "AutoModelForSequenceClassification.from_pretrained" not in card.text
    assert "majority_class" in card.text


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason='needs pip install "tmkd_hf[onnx]"')
def test_pipeline_exports_evaluates_and_times_the_onnx_student(tmp_path, tiny_backbone, tiny_student_backbone):
    """export_onnx=True (mean readout, as the default backbone): <student>/onnx/ holds both graphs; the fp32 and int8
    ONNX students get accuracy rows computed from their own logits, and throughputs from their own timed passes in
    the same interleaved measurement, so results.md and the accuracy-vs-speed picture carry them."""
    mark_mean_pooled(tiny_backbone)
    mark_mean_pooled(tiny_student_backbone)
    out = tmp_path / "out"
    config = {"backbone": tiny_backbone, "student_backbone": tiny_student_backbone, "output_dir": str(out),
              "max_train_rows": 48, "max_unlabeled_rows": 48, "max_eval_rows": 24, "teacher_epochs": 1,
              "stage1_epochs": 1, "stage2_epochs": 1, "student_layers": [0, 2], "batch_size": 8, "speed_repeats": 1,
              "logging_steps": 2, "export_onnx": True}  # fmt: skip
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, SCRIPT, str(config_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())

    onnx_dir = Path(results["paths"]["student"]) / "onnx"
    assert results["paths"]["student_onnx"] == str(onnx_dir)
    assert {"model.onnx", "model_int8.onnx", "onnx_export.json", "tokenizer.json", "config.json"} <= set(
        os.listdir(onnx_dir)
    )
    assert results["onnx_export"] == json.loads((onnx_dir / "onnx_export.json").read_text())
    assert results["onnx_export"]["readout"] == "mean"
    assert results["onnx_export"]["check"]["max_abs_logit_diff_vs_torch"]["fp32"] <= 1e-4
    onnx_rows = ["tmkd_student_onnx", "tmkd_student_onnx_int8"]
    for split in ("validation", "test"):
        assert set(results["accuracy"][split]) == set(MODELS) | set(onnx_rows)
        assert results["accuracy"][split]["tmkd_student_onnx"] == results["accuracy"][split]["tmkd_student"]
    # each row's accuracy is what its own graph scores on those rows
    from tmkd_hf.export import OnnxClassifier

    recipe = load_recipe()
    tokenizer = AutoTokenizer.from_pretrained(results["paths"]["student"])
    raw = recipe.read_tsv(os.path.join(REPO, "data", "qnli", "validation.tsv"), ["question", "sentence", "label"], 24)
    labels = np.array([results["task"]["label_names"].index(v) for v in raw["label"]])
    features = recipe.encode(tokenizer, raw, ["question", "sentence"], 128)
    for name, int8 in (("tmkd_student_onnx", False), ("tmkd_student_onnx_int8", True)):
        runner = recipe.OnnxStudent(OnnxClassifier(onnx_dir, int8=int8), AutoConfig.from_pretrained(onnx_dir))
        # the pipeline's own batch size: int8 activations are quantized per batch, so another batching can flip a
        # near-tie of this tiny model (margins down to 2e-4)
        logits = recipe.predict_logits(runner, tokenizer, features, results["config"]["eval_batch_size"])
        assert results["accuracy"]["validation"][name] == pytest.approx(recipe.accuracy(logits, labels), abs=1e-4)

    speed = results["speed"]
    assert speed["onnxruntime_threads"] == speed["torch_threads"]
    for name in onnx_rows:  # timed in the same run, same 24 test rows, one pass each
        assert len(speed["seconds_per_pass"][name]) == 1
        assert speed["examples_per_s"][name] == pytest.approx(24 / speed["seconds_per_pass"][name][0], rel=1e-3,
                                                              abs=0.06)  # fmt: skip
    markdown = (out / "results.md").read_text()
    for name in onnx_rows:
        assert markdown.count(f"| {name} |") == 2, name  # the accuracy table and the speed table
    from tmkd_hf.plots import accuracy_vs_speed_points

    assert set(onnx_rows) <= {p["model"] for p in accuracy_vs_speed_points(results)}

    # the card's speed section lists every format timed, with its own throughput, ratios and accuracy
    card = (Path(results["paths"]["student"]) / "README.md").read_text()
    teacher = speed["teacher_examples_per_s"]
    sizes = results["onnx_export"]["size_bytes"]
    signed = {"QInt8": "signed", "QUInt8": "unsigned"}[results["onnx_export"]["quantization"]["weight_type"]]
    assert results["onnx_export"]["quantization"]["weight_type_choice"]["requested"] == "auto"  # the default
    for label, name, file, size in (("PyTorch fp32", "tmkd_student", "model.safetensors", None),
                                    ("ONNX fp32", "tmkd_student_onnx", "onnx/model.onnx", sizes["fp32"]),
                                    (f"ONNX int8 ({signed} weights)", "tmkd_student_onnx_int8", "onnx/model_int8.onnx",
                                     sizes["int8"])):  # fmt: skip
        row = next(line for line in card.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2].startswith(f"`{file}"), row  # the torch student: model.safetensors, then 2_Dense's
        if size is not None:
            assert cells[3] == f"{size / 1e6:.1f}", row
        assert float(cells[4]) == pytest.approx(speed["examples_per_s"][name], rel=1e-3), row
        assert cells[5] == f"{speed['examples_per_s'][name] / teacher:.2f}x", row
        assert cells[6] == f"{speed['examples_per_s'][name] / speed['ensemble_examples_per_s']:.2f}x", row
        assert cells[7] == f"{100 * results['accuracy']['test'][name]:.1f}", row
    assert "### ONNX (onnxruntime, no PyTorch needed)" in card
    assert "- `onnx/model.onnx`: float32" in card
    assert f"- `onnx/model_int8.onnx`: {signed} int8 weights, chosen by `weight_type=\"auto\"`" in card
    assert 'onnxruntime.InferenceSession(f"{folder}/onnx/model_int8.onnx")' in card


def test_stage1_student_label_check_follows_the_soft_label_cache_rule(tmp_path):
    """A given stage-1 student must predict the task's labels in its order: one rule with the trainer's cache check
    (`soft_label_cache.same_label_order`): case is ignored, LABEL_i names match by position, other names refuse."""
    recipe = load_recipe()

    def saved(id2label: dict) -> str:
        torch.manual_seed(0)
        config = tiny_config("bert", num_labels=len(id2label), id2label=id2label,
                             label2id={v: k for k, v in id2label.items()})
        student = MultiHeadStudent(AutoModelForSequenceClassification.from_config(config), num_heads=2)
        path = tmp_path / "-".join(id2label.values())
        student.save_pretrained(path)
        return str(path)

    labels = ["entailment", "not_entailment"]
    for id2label in ({0: "Entailment", 1: "NOT_ENTAILMENT"}, {0: "LABEL_0", 1: "LABEL_1"}):
        student, _ = recipe.load_stage1_student(saved(id2label), 2, labels, None)
        assert [student.config.id2label[i] for i in range(2)] == labels  # it takes the task's names
    with pytest.raises(ValueError, match="predicts the labels"):
        recipe.load_stage1_student(saved({0: "not_entailment", 1: "entailment"}), 2, labels, None)
    with pytest.raises(ValueError, match="predicts the labels"):
        recipe.load_stage1_student(saved({0: "a", 1: "b", 2: "c"}), 2, labels, None)
    with pytest.raises(ValueError, match="has 2 heads but this run has 3 teachers"):
        recipe.load_stage1_student(saved({0: "entailment", 1: "not_entailment"}), 3, labels, None)
