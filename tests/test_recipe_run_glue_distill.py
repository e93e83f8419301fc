"""recipes/run_glue_distill.py (TMKD stage 2, run_glue-style) end to end on tiny models and tiny files.

Most runs call the recipe's `main(argv)` in this process (the same argument parsing as the command line, without
paying a Python + torch start-up per case); the command-line / JSON-config entry point runs once as a subprocess,
and the 2-process `accelerate launch` run is the slow test at the end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORDS, count_label_shards, keyword_dataset, tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tmkd_hf import MultiHeadStudent, label_with_teachers, load_rows
from tmkd_hf.soft_label_cache import LOCK_NAME
from tmkd_hf.tasks import ranking_metrics

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE = RECIPES / "run_glue_distill.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
QNLI_NAMES = ["entailment", "not_entailment"]


@pytest.fixture(scope="module")
def recipe():
    sys.path.insert(0, str(RECIPES))
    try:
        import run_glue_distill
    finally:
        sys.path.remove(str(RECIPES))
    return run_glue_distill


@pytest.fixture
def student_dir(tmp_path, tokenizer):
    path = tmp_path / "student"
    tiny_model("bert", seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_tsv(path: Path, header: list[str], rows: list[list]) -> str:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def qnli_rows(n: int, seed: int, labelled: bool = True) -> list[list]:
    ds = keyword_dataset(n, seed=seed)
    # quotes inside sentences, as in GLUE's TSVs (read without quoting)
    return [
        [i, q, f'{s} "quoted', *([QNLI_NAMES[1 - y]] if labelled else [])]
        for i, (q, s, y) in enumerate(zip(ds["question"], ds["sentence"], ds["label"]))
    ]


@pytest.fixture
def qnli_files(tmp_path):
    header = ["index", "question", "sentence", "label"]
    return {
        "train": write_tsv(tmp_path / "train.tsv", header, qnli_rows(48, seed=1)),
        "validation": write_tsv(tmp_path / "dev.tsv", header, qnli_rows(16, seed=2)),
        "test": write_tsv(tmp_path / "test.tsv", header[:3], qnli_rows(12, seed=3, labelled=False)),
    }


def common(tmp_path: Path, out: str = "out", epochs: int = 1) -> list[str]:
    return [
        "--output_dir",
        str(tmp_path / out),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--use_cpu",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "8",
        "--num_train_epochs",
        str(epochs),
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "2",
        "--seed",
        "0",
    ]


def qnli_args(files: dict, *flags: str) -> list[str]:
    return [
        "--task_name",
        "qnli",
        "--train_file",
        files["train"],
        "--validation_file",
        files["validation"],
        "--do_train",
        "--do_eval",
        *flags,
    ]


def log_keys(out: Path) -> set[str]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {k for entry in state["log_history"] for k in entry}


def assert_merged_student(out: Path, labels: list[str] | None = QNLI_NAMES):
    """The final model is a plain checkpoint with its tokenizer (every head merged into one)."""
    assert not (out / "tmkd_student.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    if labels is not None:
        assert [model.config.id2label[i] for i in range(model.config.num_labels)] == labels
    AutoTokenizer.from_pretrained(out)
    return model


# ----- the command line (subprocess, JSON config) -----


def test_plain_fine_tuning_from_a_json_config_pushed_to_the_hub(tmp_path, student_dir, qnli_files):
    """No teachers: fine-tuning on the labels (how teachers are trained); train, evaluate, predict, and push the
    model with its card (run_glue's `push_to_hub(**kwargs)`) to the loopback Hub double of tests/hub_server.py."""
    from hub_server import HubServer

    config = {
        "task_name": "qnli",
        "train_file": qnli_files["train"],
        "validation_file": qnli_files["validation"],
        "test_file": qnli_files["test"],
        "model_name_or_path": student_dir,
        "do_train": True,
        "do_eval": True,
        "do_predict": True,
        "alpha": 0.7,  # irrelevant without teachers
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "push_to_hub": True,
        "hub_model_id": "tester/qnli-student",
        "hub_token": "test-token",
        "export_onnx": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with HubServer() as hub:
        env = {k: v for k, v in ENV.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HUB_OFFLINE="0",  # models and data stay local (HF_DATASETS_OFFLINE=1); only the push goes out
            HF_EVALUATE_OFFLINE="1",  # the metric's local twin: no attempt to fetch evaluate's module
            HF_HUB_DISABLE_XET="1",
            HF_HOME=str(tmp_path / "hf-home"),
        )
        done = subprocess.run(
            [sys.executable, str(RECIPE), str(tmp_path / "config.json")],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        pushed = hub.files("tester/qnli-student")
        card = pushed["README.md"].decode()
        snippet = card.split("### ONNX (onnxruntime, no PyTorch needed)")[1].split("```python")[1].split("```")[0]
        snippets = {True: snippet, False: snippet.replace("model_int8.onnx", "model.onnx")}
        user_runs = {}
        for int8, code in snippets.items():
            code += "\nimport sys, json\nassert 'tmkd_hf' not in sys.modules\nprint(json.dumps(logits.tolist()))\n"
            user_env = {**env, "HF_HOME": str(tmp_path / f"user-home-{int8}")}
            user_runs[int8] = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             env=user_env, cwd=tmp_path, timeout=300)  # fmt: skip
    out = tmp_path / "out"
    results = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "train_samples", "eval_accuracy", "eval_loss", "eval_samples"} <= set(results)
    assert results["train_samples"] == 48 and results["eval_samples"] == 16
    assert "loss_soft" not in log_keys(out)  # no teachers: labels only
    lines = (out / "predict_results_qnli.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    assert {line.split("\t")[1] for line in lines[1:]} <= set(QNLI_NAMES)
    assert_merged_student(out)
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(pushed)
    assert pushed["model.safetensors"] == (out / "model.safetensors").read_bytes()
    card = pushed["README.md"].decode()
    assert "glue" in card and "qnli" in card.lower() and "text-classification" in card
    # --export_onnx: the graphs are pushed with the model, and the card's onnxruntime snippet, run as a user would
    # (a fresh process that never imports tmkd_hf, downloading from the Hub), gives the trained model's logits
    for name in ("onnx/model.onnx", "onnx/model_int8.onnx", "onnx/onnx_export.json", "onnx/tokenizer.json"):
        assert pushed[name] == (out / name).read_bytes(), name
    assert 'snapshot_download("tester/qnli-student"' in snippets[True] and "model_int8.onnx" in snippets[True]
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        expected = model(**tok(["What is the capital of France?"], ["Paris is the capital of France."],
                               return_tensors="pt")).logits.numpy()  # fmt: skip
    for int8, ran in user_runs.items():
        assert ran.returncode == 0, ran.stderr[-3000:]
        np.testing.assert_allclose(json.loads(ran.stdout), expected, atol=0.05 if int8 else 1e-4, rtol=0)


# ----- distillation -----


def test_distillation_from_a_labelled_dataset_dir(recipe, tmp_path, student_dir, qnli_files, teacher_dirs):
    """--teacher_logits_dir (recipes/label_teachers.py output): one head per teacher, checked to be these rows."""
    labelled = tmp_path / "labelled"
    label_with_teachers(
        load_rows(qnli_files["train"], cache_dir=str(tmp_path / "cache")),
        teacher_dirs,
        text_columns=("question", "sentence"),
        output_dir=labelled,
        show_progress=False,
    )
    args = qnli_args(qnli_files, "--model_name_or_path", student_dir, "--teacher_logits_dir", str(labelled))
    metrics = recipe.main([*args, *common(tmp_path), "--alpha", "0.5"])
    out = tmp_path / "out"
    assert {"loss_soft", "loss_hard", "loss_soft_teacher_0", "loss_soft_teacher_2"} <= log_keys(out)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert_merged_student(out)

    # the labelled dir alone is the training data; --per_teacher_heads false: one head, averaged teachers (1avg-o-1)
    args = ["--task_name", "qnli", "--teacher_logits_dir", str(labelled), "--validation_file", qnli_files["validation"]]
    recipe.main([*args, "--model_name_or_path", student_dir, "--do_train", "--do_eval", "--per_teacher_heads", "false",
                 *common(tmp_path, "avg")])  # fmt: skip
    keys = log_keys(tmp_path / "avg")
    assert "loss_soft" in keys and "loss_soft_teacher_0" not in keys

    # logits computed on other rows are refused before anything trains
    other = write_tsv(tmp_path / "other.tsv", ["index", "question", "sentence", "label"], qnli_rows(48, seed=9))
    with pytest.raises(ValueError, match="other rows"):
        recipe.main([*qnli_args({**qnli_files, "train": other}, "--model_name_or_path", student_dir,
                                "--teacher_logits_dir", str(labelled)), *common(tmp_path, "bad")])  # fmt: skip


def test_teachers_labelled_on_the_fly_and_cached(recipe, tmp_path, qnli_files, teacher_dirs, monkeypatch):
    """--teachers: labelled once into output_dir/teacher_logits; a rerun reuses the cache. The student is built from
    teacher layers (--student_layers / --student_init_from)."""
    args = qnli_args(
        qnli_files, "--teachers", *teacher_dirs[:2], "--student_layers", "1", "--student_init_from", teacher_dirs[0]
    )
    recipe.main([*args, *common(tmp_path)])
    out = tmp_path / "out"
    cache = out / "teacher_logits" / "train"
    manifest = json.loads((cache / "tmkd_manifest.json").read_text())
    assert manifest["label_names_order"] == QNLI_NAMES and len(manifest["teachers"]) == 2
    assert {"loss_soft_teacher_0", "loss_soft_teacher_1"} <= log_keys(out)  # 2 teachers: 2 heads by default
    model = assert_merged_student(out)
    assert model.config.num_hidden_layers == 1
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file() and p.name != LOCK_NAME}
    shards = count_label_shards(monkeypatch)
    recipe.main([*args, *common(tmp_path)])
    assert shards == []  # no teacher forward on the rerun
    assert {p: (cache / p).stat().st_mtime_ns for p in stamps} == stamps  # reused, not relabelled (the lock aside)


def test_stage1_multi_head_student_continues_with_every_head(recipe, tmp_path, tokenizer, qnli_files, teacher_dirs):
    stage1 = tmp_path / "stage1"
    MultiHeadStudent(tiny_model("bert", seed=3), num_heads=3).save_pretrained(stage1)
    tokenizer.save_pretrained(stage1)
    initial = load_file(stage1 / "model.safetensors")["model.classifier.weight"]  # [heads, labels, hidden]
    args = qnli_args(qnli_files, "--model_name_or_path", str(stage1), "--teachers", *teacher_dirs)
    recipe.main([*args, *common(tmp_path), "--save_strategy", "epoch"])
    out = tmp_path / "out"
    (checkpoint,) = out.glob("checkpoint-*")
    continued = MultiHeadStudent.from_pretrained(checkpoint)  # checkpoints keep every head
    heads = continued.head.weight.detach()
    assert continued.num_heads == 3
    for i in range(3):
        assert not torch.allclose(heads[i], initial[i])  # every head trained ...
    assert not torch.allclose(heads[0], heads[1]) and not torch.allclose(heads[1], heads[2])  # ... on its teacher
    merged = assert_merged_student(out)
    torch.testing.assert_close(merged.classifier.weight, heads.mean(0))  # final model: heads merged (equal weights)

    with pytest.raises(ValueError, match="has 3 heads but 2 teachers"):
        recipe.main([*qnli_args(qnli_files, "--model_name_or_path", str(stage1), "--teachers", *teacher_dirs[:2]),
                     *common(tmp_path, "bad")])  # fmt: skip


# ----- tasks: regression, WikiQA ranking, MNLI matched + mismatched -----


def test_stsb_regression_with_regression_teachers(recipe, tmp_path, tokenizer):
    rng = random.Random(0)
    teachers = []
    for i in range(2):
        path = tmp_path / f"reg-teacher-{i}"
        tiny_model("bert", num_labels=1, seed=20 + i).save_pretrained(path)
        tokenizer.save_pretrained(path)
        teachers.append(str(path))
    student = tmp_path / "reg-student"
    tiny_model("bert", seed=0).save_pretrained(student)  # a 2-label checkpoint: the head is resized to 1 output
    tokenizer.save_pretrained(student)

    def rows(n):
        return [[i, " ".join(rng.choices(WORDS, k=5)), " ".join(rng.choices(WORDS, k=6)), round(rng.uniform(0, 5), 2)]
                for i in range(n)]  # fmt: skip

    header = ["index", "sentence1", "sentence2", "score"]  # GLUE's STS-B TSV calls the label "score"
    train = write_tsv(tmp_path / "train.tsv", header, rows(32))
    dev = write_tsv(tmp_path / "dev.tsv", header, rows(12))
    test = write_tsv(tmp_path / "test.tsv", header[:3], [r[:3] for r in rows(5)])
    args = ["--task_name", "stsb", "--train_file", train, "--validation_file", dev, "--test_file", test,
            "--model_name_or_path", str(student), "--ignore_mismatched_sizes", "--teachers", *teachers,
            "--do_train", "--do_eval", "--do_predict"]  # fmt: skip
    metrics = recipe.main([*args, *common(tmp_path)])
    assert {"eval_pearson", "eval_spearmanr", "eval_combined_score"} <= set(metrics)
    assert metrics["eval_combined_score"] == pytest.approx((metrics["eval_pearson"] + metrics["eval_spearmanr"]) / 2)
    out = tmp_path / "out"
    assert {"loss_soft_teacher_0", "loss_soft_teacher_1"} <= log_keys(out)
    model = assert_merged_student(out, labels=None)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    lines = (out / "predict_results_stsb.txt").read_text().splitlines()
    assert len(lines) == 6 and all("." in line.split("\t")[1] for line in lines[1:])


def wikiqa_rows(n_questions: int, seed: int) -> list[list]:
    """The published WikiQA TSV: QuestionID Question DocumentID DocumentTitle SentenceID Sentence Label."""
    ds = keyword_dataset(n_questions * 4, seed=seed)
    rows = []
    for q in range(n_questions):
        for k in range(4):
            i = q * 4 + k
            label = ds["label"][i] if q % 3 else 0  # every third question has no correct answer
            rows.append([f"Q{q}", ds["question"][q * 4], f"D{q}", "Title", f"D{q}-{k}", ds["sentence"][i], label])
    return rows


def test_wikiqa_reports_map_and_mrr(recipe, tmp_path, student_dir):
    header = ["QuestionID", "Question", "DocumentID", "DocumentTitle", "SentenceID", "Sentence", "Label"]
    train = write_tsv(tmp_path / "WikiQA-train.tsv", header, wikiqa_rows(10, seed=1))
    dev_rows = wikiqa_rows(6, seed=2)
    dev = write_tsv(tmp_path / "WikiQA-dev.tsv", header, dev_rows)
    args = ["--task_name", "wikiqa", "--train_file", train, "--validation_file", dev, "--test_file", dev,
            "--model_name_or_path", student_dir, "--do_train", "--do_eval", "--do_predict"]  # fmt: skip
    metrics = recipe.main([*args, *common(tmp_path)])
    assert {"eval_accuracy", "eval_f1", "eval_map", "eval_mrr", "eval_combined_score"} <= set(metrics)
    assert {"predict_map", "predict_mrr"} <= set(metrics)  # a labelled test file is scored too
    # the same MAP / MRR recomputed from the saved model's scores (questions without an answer left out)
    out = tmp_path / "out"
    model = assert_merged_student(out, labels=["0", "1"]).eval()
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok([r[1] for r in dev_rows], [r[5] for r in dev_rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    expected = ranking_metrics(logits[:, 1] - logits[:, 0], [r[6] == 1 for r in dev_rows], [r[0] for r in dev_rows])
    assert metrics["eval_map"] == pytest.approx(expected["map"], abs=1e-6)
    assert metrics["eval_mrr"] == pytest.approx(expected["mrr"], abs=1e-6)
    assert metrics["predict_map"] == pytest.approx(metrics["eval_map"])


def test_mnli_evaluates_matched_and_mismatched(recipe, tmp_path, tokenizer):
    names = ["entailment", "neutral", "contradiction"]
    rng = random.Random(0)

    def rows(n, labelled=True):
        return [[i, "fiction", " ".join(rng.choices(WORDS, k=6)), " ".join(rng.choices(WORDS, k=4)),
                 *([rng.choice(names)] if labelled else [])] for i in range(n)]  # fmt: skip

    header = ["index", "genre", "sentence1", "sentence2", "gold_label"]  # the GLUE MNLI TSV column names
    files = {
        "--train_file": write_tsv(tmp_path / "train.tsv", header, rows(24)),
        "--validation_file": write_tsv(tmp_path / "dev_matched.tsv", header, rows(8)),
        "--validation_mismatched_file": write_tsv(tmp_path / "dev_mismatched.tsv", header, rows(6)),
        "--test_file": write_tsv(tmp_path / "test_matched.tsv", header[:4], rows(5, labelled=False)),
        "--test_mismatched_file": write_tsv(tmp_path / "test_mismatched.tsv", header[:4], rows(4, labelled=False)),
    }
    student = tmp_path / "mnli-student"
    tiny_model("bert", num_labels=3, seed=0).save_pretrained(student)
    tokenizer.save_pretrained(student)
    args = ["--task_name", "mnli", *[v for kv in files.items() for v in kv], "--model_name_or_path", str(student),
            "--do_train", "--do_eval", "--do_predict"]  # fmt: skip
    recipe.main([*args, *common(tmp_path)])
    out = tmp_path / "out"
    evaluated = json.loads((out / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_accuracy_mm", "eval_samples", "eval_samples_mm"} <= set(evaluated)
    assert evaluated["eval_samples"] == 8 and evaluated["eval_samples_mm"] == 6
    assert len((out / "predict_results_mnli.txt").read_text().splitlines()) == 6
    assert len((out / "predict_results_mnli-mm.txt").read_text().splitlines()) == 5
    assert_merged_student(out, labels=names)


# ----- the example configs -----


@pytest.mark.parametrize("config", sorted(p.name for p in (RECIPES / "configs").glob("glue_*.json")))
def test_example_configs_parse(recipe, config, monkeypatch):
    monkeypatch.chdir(RECIPES.parent)  # their data paths are relative to the repository root
    model_args, data_args, training_args, _ = recipe.parse_args([str(RECIPES / "configs" / config)])
    assert data_args.task_name and training_args.do_train
    assert model_args.model_name_or_path or model_args.student_init_from


# ----- bad input: clear errors before anything trains -----


@pytest.mark.parametrize(
    "case, match",
    [
        ("unknown_task", r"Unknown task 'glu'"),
        ("both_teacher_flags", r"--teachers .* or --teacher_logits_dir .*not both"),
        ("no_student", r"No student"),
        ("layers_source_missing", r"--student_init_from needs --student_layers"),
        ("missing_column", r"no column \['passage'\]"),
        ("unseen_eval_label", r"labels \['maybe'\] that are not in the label set"),
        ("model_labels_differ", r"do not match the model's labels \['negative', 'positive'\]"),
        ("heads_without_teachers", r"--per_teacher_heads needs teachers"),
        ("mismatched_not_mnli", r"mnli only"),
        ("export_without_training", r"--export_onnx exports the student this run trains: add --do_train"),
        ("eval_without_data", r"--do_eval needs evaluation data"),
        ("custom_without_columns", r"--text_columns"),
        ("student_path_typo", r"--model_name_or_path '\./no-such-student': no such directory, and it is not a Hub id"),
        ("teacher_path_typo", r"--teachers \[1\]: teacher '/no/teacher': no such directory"),
    ],
)
def test_bad_input_is_a_clear_error(recipe, tmp_path, student_dir, qnli_files, tokenizer, case, match):
    base = qnli_args(qnli_files, "--model_name_or_path", student_dir)
    header = ["index", "question", "sentence", "label"]
    if case == "unknown_task":
        argv = ["--task_name", "glu", "--model_name_or_path", student_dir]
    elif case == "both_teacher_flags":
        argv = [*base, "--teachers", student_dir, "--teacher_logits_dir", str(tmp_path)]
    elif case == "no_student":
        argv = qnli_args(qnli_files)
    elif case == "student_path_typo":
        argv = qnli_args(qnli_files, "--model_name_or_path", "./no-such-student")
    elif case == "teacher_path_typo":
        argv = [*base, "--teachers", student_dir, "/no/teacher"]
    elif case == "layers_source_missing":
        argv = [*qnli_args(qnli_files), "--student_init_from", student_dir]
    elif case == "missing_column":
        argv = [*base, "--text_columns", "question", "passage"]
    elif case == "unseen_eval_label":
        bad = write_tsv(tmp_path / "bad.tsv", header, [[0, "who", "a city", "maybe"]])
        argv = qnli_args({**qnli_files, "validation": bad}, "--model_name_or_path", student_dir)
    elif case == "model_labels_differ":
        named = tmp_path / "sentiment"
        labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
        tiny_model("bert", **labels).save_pretrained(named)
        tokenizer.save_pretrained(named)
        argv = qnli_args(qnli_files, "--model_name_or_path", str(named))
    elif case == "heads_without_teachers":
        argv = [*base, "--per_teacher_heads", "true"]
    elif case == "mismatched_not_mnli":
        argv = [*base, "--validation_mismatched_file", qnli_files["validation"]]
    elif case == "export_without_training":
        argv = ["--task_name", "qnli", "--validation_file", qnli_files["validation"], "--model_name_or_path",
                student_dir, "--do_eval", "--export_onnx"]  # fmt: skip
    elif case == "eval_without_data":
        argv = ["--task_name", "qnli", "--train_file", qnli_files["train"], "--model_name_or_path", student_dir,
                "--do_eval"]  # fmt: skip
    elif case == "custom_without_columns":  # nothing but a row number and the label: no text to infer
        only_label = write_tsv(tmp_path / "labels.tsv", ["idx", "label"], [[0, "entailment"], [1, "not_entailment"]])
        argv = ["--train_file", only_label, "--model_name_or_path", student_dir, "--do_train"]
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        recipe.main([*argv, *common(tmp_path)])
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ----- several processes -----


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tokenizer, qnli_files, teacher_dirs):
    """`accelerate launch --num_processes 2` (CPU, gloo) of stage 2 with teachers labelled on the fly gives the same
    final weights and metrics as 1 process with twice the per-device batch (sequential sampling, no dropout)."""
    student = tmp_path / "student-nodrop"
    tiny_model("bert", seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(student)
    tokenizer.save_pretrained(student)

    def argv(out: str, batch: int) -> list[str]:
        flags = ["--teachers", *teacher_dirs, "--do_predict", "--test_file", qnli_files["test"]]
        return [*qnli_args(qnli_files, "--model_name_or_path", str(student), *flags),
                *common(tmp_path, out, epochs=2), "--per_device_train_batch_size", str(batch),
                "--train_sampling_strategy", "sequential"]  # fmt: skip

    def run(cmd):
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]

    run([sys.executable, str(RECIPE), *argv("one", 8)])
    assert shutil.which("accelerate"), "accelerate CLI not on PATH"
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29541"]
    run([*launch, str(RECIPE), *argv("two", 4)])
    one, two = tmp_path / "one", tmp_path / "two"
    single, ddp = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert set(single) == set(ddp)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=2e-6, rtol=1e-5, msg=key)
    m1, m2 = (json.loads((d / "eval_results.json").read_text()) for d in (one, two))
    assert m1["eval_samples"] == m2["eval_samples"] == 16
    assert m2["eval_accuracy"] == m1["eval_accuracy"]
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], abs=1e-5)
    assert (two / "predict_results_qnli.txt").read_text() == (one / "predict_results_qnli.txt").read_text()
    assert json.loads((two / "train_results.json").read_text())["train_samples"] == 48
    # labelled in one shard per process: other batches, other padding, float32 rounding differences only
    np.testing.assert_allclose(
        np.asarray(load_rows(two / "teacher_logits" / "train")["teacher_logits"]),
        np.asarray(load_rows(one / "teacher_logits" / "train")["teacher_logits"]),
        atol=1e-6,
    )


# ----- readouts: a mean-pooled backbone gives mean-readout teachers and students, exported as CrossEncoders -----


def test_mean_pooled_backbone_trains_and_continues_through_the_mean(recipe, tmp_path, tokenizer, qnli_files,
                                                                     teacher_dirs):
    from conftest import tiny_config
    from transformers import AutoModel

    backbone = tmp_path / "mean-backbone"
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert")).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    (backbone / "1_Pooling").mkdir()
    (backbone / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    # 1. plain fine-tuning (how the recipes train a teacher) reads the mean and saves a CrossEncoder
    recipe.main([*qnli_args(qnli_files, "--model_name_or_path", str(backbone)), *common(tmp_path, "teacher")])
    teacher = tmp_path / "teacher"
    assert (teacher / "modules.json").is_file() and not (teacher / "tmkd_student.json").exists()
    reloaded = MultiHeadStudent.from_pretrained(teacher)
    assert reloaded.readout == "mean" and reloaded.config.id2label == dict(enumerate(QNLI_NAMES))
    dense = reloaded.head.weight.detach()[0]
    # 2. stage 2 from that one-head export with 3 teachers: every head starts from its Dense layer and trains
    recipe.main([*qnli_args(qnli_files, "--model_name_or_path", str(teacher), "--teachers", *teacher_dirs),
                 *common(tmp_path, "stage2"), "--save_strategy", "epoch"])
    (checkpoint,) = (tmp_path / "stage2").glob("checkpoint-*")
    continued = MultiHeadStudent.from_pretrained(checkpoint)
    assert continued.num_heads == 3 and continued.readout == "mean"
    for i in range(3):
        assert not torch.allclose(continued.head.weight[i].detach(), dense)
    assert (tmp_path / "stage2" / "modules.json").is_file()
    # 3. --readout cls overrides: a plain [CLS] checkpoint
    recipe.main([*qnli_args(qnli_files, "--model_name_or_path", str(backbone), "--readout", "cls"),
                 *common(tmp_path, "cls")])
    assert_merged_student(tmp_path / "cls")


def test_custom_files_without_text_columns_are_read_as_run_glue_reads_them(recipe, tmp_path, student_dir, qnli_files):
    infer = recipe.infer_text_columns
    assert infer(["sentence2", "x", "sentence1", "label"], "label", None) == ["sentence1", "sentence2"]
    assert infer(["idx", "question", "sentence", "label"], "label", None) == ["question", "sentence"]
    assert infer(["id", "text", "label"], "label", None) == ["text"]
    assert infer(["qid", "q", "a", "y"], "y", "qid") == ["q", "a"]
    assert infer(["index", "label"], "label", None) is None
    # end to end: a QNLI TSV (idx, question, sentence, label) with no --task_name and no --text_columns
    argv = ["--train_file", qnli_files["train"], "--validation_file", qnli_files["validation"],
            "--model_name_or_path", student_dir, "--do_train", "--do_eval"]  # fmt: skip
    metrics = recipe.main([*argv, *common(tmp_path)])
    assert "eval_accuracy" in metrics
    assert_merged_student(tmp_path / "out", labels=["entailment", "not_entailment"])


def test_unlabelled_rows_are_dropped_from_train_and_eval_with_a_count(recipe, tmp_path, student_dir, caplog):
    """SNLI / MNLI's Hub copies mark unlabelled pairs with -1: without teachers they teach nothing, and they cannot
    be scored; both are dropped, and the log says how many."""
    from datasets import ClassLabel, Dataset

    rng = random.Random(0)

    def split(n, unlabelled):
        rows = {"premise": [" ".join(rng.choices(WORDS, k=6)) for _ in range(n)],
                "hypothesis": [" ".join(rng.choices(WORDS, k=4)) for _ in range(n)],
                "label": [-1 if i in unlabelled else rng.randrange(3) for i in range(n)]}  # fmt: skip
        ds = Dataset.from_dict(rows)
        return ds.cast_column("label", ClassLabel(names=["entailment", "neutral", "contradiction"]))

    split(24, {3, 7, 8}).save_to_disk(str(tmp_path / "snli-train"))
    split(10, {0, 9}).save_to_disk(str(tmp_path / "snli-validation"))
    student = tmp_path / "snli-student"
    tiny_model("bert", num_labels=3, seed=0).save_pretrained(student)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(student)
    argv = ["--train_file", str(tmp_path / "snli-train"), "--validation_file", str(tmp_path / "snli-validation"),
            "--model_name_or_path", str(student), "--text_columns", "premise",
            "hypothesis", "--do_train", "--do_eval"]  # fmt: skip
    with caplog.at_level("WARNING"):
        metrics = recipe.main([*argv, *common(tmp_path)])
    messages = [r.getMessage() for r in caplog.records]
    assert any("Dropping 3 unlabelled row(s) (label -1 or empty) of 24 from the training data" in m for m in messages)
    assert any("Dropping 2 unlabelled row(s) (label -1 or empty) of 10 from the evaluation data" in m for m in messages)
    assert metrics["eval_samples"] == 8
    assert json.loads((tmp_path / "out" / "train_results.json").read_text())["train_samples"] == 21


def test_dataset_name_loads_any_dataset_as_run_glue_does(recipe, tmp_path, student_dir):
    """--dataset_name / --dataset_config_name go to `datasets.load_dataset` (here a local data directory, which it
    reads like a Hub repo: train.csv / validation.csv); offline and unreachable, the message says what to do."""
    data = tmp_path / "my-dataset"
    data.mkdir()
    rows = qnli_rows(40, seed=4)
    for name, part in (("train", rows[:28]), ("validation", rows[28:])):
        lines = ["question,sentence,label"] + [f"{r[1]},{r[2].replace(chr(34), '')},{r[3]}" for r in part]
        (data / f"{name}.csv").write_text("\n".join(lines) + "\n")
    argv = ["--dataset_name", str(data), "--model_name_or_path", student_dir, "--do_train", "--do_eval"]
    metrics = recipe.main([*argv, *common(tmp_path)])
    assert metrics["eval_samples"] == 12 and "eval_accuracy" in metrics
    with pytest.raises(ValueError, match=r"Cannot load --dataset_name nyu-mll/glue \(qnli\): .* Offline"):
        recipe.main(["--dataset_name", "nyu-mll/glue", "--dataset_config_name", "qnli", "--model_name_or_path",
                     student_dir, "--do_train", *common(tmp_path)])  # fmt: skip
    with pytest.raises(ValueError, match="Give the data one way"):
        recipe.main(["--dataset_name", str(data), "--train_file", str(data / "train.csv"), "--model_name_or_path",
                     student_dir, *common(tmp_path)])  # fmt: skip


def test_headerless_cola_tsv_is_read_with_its_column_names(recipe, tmp_path, student_dir):
    """The original CoLA TSVs have no header: source, label, original label, sentence."""
    rng = random.Random(3)
    rows = [[f"src{i % 3}", i % 2, "*" if i % 2 == 0 else "", " ".join(rng.choices(WORDS, k=5))] for i in range(20)]
    train = tmp_path / "in_domain_train.tsv"
    train.write_text("\n".join("\t".join(map(str, r)) for r in rows) + "\n")  # no header line
    dev = tmp_path / "in_domain_dev.tsv"
    dev.write_text("\n".join("\t".join(map(str, r)) for r in rows[:8]) + "\n")
    argv = ["--task_name", "cola", "--train_file", str(train), "--validation_file", str(dev), "--file_column_names",
            "source", "label", "original_label", "sentence", "--model_name_or_path", student_dir, "--do_train",
            "--do_eval", "--ignore_mismatched_sizes"]  # fmt: skip
    metrics = recipe.main([*argv, *common(tmp_path)])
    assert metrics["eval_samples"] == 8  # the first line is a row, not a header
    assert "eval_matthews_correlation" in metrics
    from tmkd_hf import load_rows

    assert len(load_rows(train, column_names=["source", "label", "original_label", "sentence"])) == 20
    assert len(load_rows(train)) == 19  # without the names, the first row is taken for a header
    with pytest.raises(ValueError, match="column_names is for headerless"):
        load_rows(tmp_path, column_names=["a"])
