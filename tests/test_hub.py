"""Publishing on the Hub, end to end, against the loopback Hub double in `hub_server.py`.

huggingface_hub reads `HF_ENDPOINT` / `HF_HUB_OFFLINE` when it is imported, and the test session runs offline, so
each scenario runs in a child Python (this file, run as a script) whose environment points at the server; the child
reports what it saw as JSON and the assertions are made here, together with what the server stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer

REPO = "tester/tiny-tmkd"
STAGE1_REPO = "tester/tiny-stage1"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SENTINEL_TOKEN = "hf_tmkdSentinelTokenDoNotLeak42"  # the roundtrip's hub_token: no saved or pushed file may hold it


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


def run_child(scenario: str, hub: HubServer, tmp_path: Path, timeout: int = 240) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",  # hf_xet is installed: without this, uploads would go through Xet storage
        HF_HOME=str(tmp_path / "hf-home"),  # an empty cache and no stored token
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    result_file = tmp_path / f"{scenario}.json"
    proc = subprocess.run(
        [sys.executable, __file__, scenario, str(tmp_path), str(result_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child {scenario} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(result_file.read_text())


@pytest.fixture(scope="module")
def roundtrip(hub, tmp_path_factory):
    return run_child("roundtrip", hub, tmp_path_factory.mktemp("roundtrip"))


@pytest.fixture(scope="module")
def failures(hub, tmp_path_factory):
    hub.fail("POST", r"^/api/models/tester/server-error/commit/", 500)
    try:
        return run_child("failures", hub, tmp_path_factory.mktemp("failures"))
    finally:
        hub.clear_failures()


def safetensors_shapes(data: bytes) -> dict[str, list[int]]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


# ----- round trip -----


def test_pushed_student_loads_by_repo_id_with_identical_logits(roundtrip, hub):
    assert roundtrip["max_abs_logit_diff"] == 0.0
    assert roundtrip["hub_model_class"] == "BertForSequenceClassification"
    assert len(roundtrip["pipeline_labels"]) == 2 and set(roundtrip["pipeline_labels"]) <= {"LABEL_0", "LABEL_1"}
    assert hub.unhandled == []


def test_repo_root_is_the_merged_plain_model_and_checkpoints_keep_every_head(roundtrip, hub):
    files = hub.files(REPO)
    root = {p for p in files if "/" not in p}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= root
    assert "tmkd_student.json" not in root
    shapes = safetensors_shapes(files["model.safetensors"])
    assert len(shapes["classifier.weight"]) == 2  # one merged head
    # hub_strategy="checkpoint": the latest checkpoint, with all 3 heads, under last-checkpoint/
    assert "last-checkpoint/tmkd_student.json" in files
    assert shapes_of_heads(files["last-checkpoint/model.safetensors"]) == 3
    # during training too, every commit that put weights at the root put a plain merged model there
    for commit in hub.commits(REPO):
        record = commit["files"].get("model.safetensors")
        if record is not None:
            assert "config.json" in commit["files"], commit["title"]
            assert len(safetensors_shapes(hub.read_blob(record))["classifier.weight"]) == 2, commit["title"]
    titles = [c["title"] for c in hub.commits(REPO)]
    assert any(t.startswith("Training in progress") for t in titles) and titles[-1] == "End of training"


def test_the_hub_token_is_in_no_saved_or_pushed_file(roundtrip, hub):
    """`hub_token` reaches the Hub as a header only: not in training_args.bin (final save and every checkpoint
    pushed by hub_strategy="checkpoint"), cards, JSON or logs, locally or on the server."""
    token = SENTINEL_TOKEN.encode()
    pushed = {path for path, data in hub.files(REPO).items() if token in data}
    stored = [str(p) for p in hub.root.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert "training_args.bin" in hub.files(REPO) and "last-checkpoint/training_args.bin" in hub.files(REPO)
    assert pushed == set() and stored == []
    assert roundtrip["local_files_checked"] > 10 and roundtrip["local_files_with_token"] == []


def shapes_of_heads(data: bytes) -> int:
    return safetensors_shapes(data)["model.classifier.weight"][0]


def test_card_metadata_and_model_index_match_the_run(roundtrip):
    card = roundtrip["card"]
    assert card["library_name"] == "transformers"
    assert card["pipeline_tag"] == "text-classification"
    assert {"knowledge-distillation", "tmkd"} <= set(card["tags"])
    assert card["datasets"] == ["nyu-mll/glue"]
    assert card["license"] == "apache-2.0"
    assert card["base_model"] == "google/bert_uncased_L-2_H-128_A-2"
    # model-index parses back equal to what the run measured
    expected = {
        (split, key.split("_", 1)[1]): value
        for split, metrics in roundtrip["metrics"].items()
        for key, value in metrics.items()
        if key.split("_", 1)[1] in ("accuracy",)
    }
    parsed = {(r["split"], r["metric"]): r["value"] for r in roundtrip["eval_results"]}
    assert parsed == expected and len(parsed) == 2
    assert all(r["dataset"] == "nyu-mll/glue" and r["config"] == "qnli" for r in roundtrip["eval_results"])
    text = roundtrip["card_text"]
    for teacher in ("teacher-0", "teacher-1", "teacher-2"):
        assert teacher in text
    assert "arXiv:1910.08381" in text and "@inproceedings{yang2020tmkd" in text
    assert f'pipeline("text-classification", model="{REPO}")' in text
    assert "Inference speed" not in text  # not measured by this run: omitted, not invented


def test_teacher_logits_dataset_round_trip(roundtrip, hub):
    assert roundtrip["logits_dataset"]["same_logits"] is True
    assert roundtrip["logits_dataset"]["manifest_equal"] is True
    files = hub.files("tester/tiny-logits", repo_type="dataset")
    assert {"tmkd_manifest.json", "README.md", "data/train-00000-of-00001.parquet"} <= set(files)


# ----- a stage-1 student published on its own, and stage 2 / the pipeline started from its repo id -----


@pytest.fixture(scope="module")
def stage1(hub, tmp_path_factory):
    return run_child("stage1", hub, tmp_path_factory.mktemp("stage1"), timeout=600)


def test_stage1_push_publishes_every_head_at_the_root_and_the_merged_student_in_merged(stage1, hub):
    files = hub.files(STAGE1_REPO)
    root = {p for p in files if "/" not in p}
    assert {"tmkd_student.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= root
    assert "config.json" not in root  # the root is the multi-head student, not a plain model
    assert shapes_of_heads(files["model.safetensors"]) == 3  # every head: [heads, labels, hidden]
    assert files["model.safetensors"] == Path(stage1["local_weights"]).read_bytes()  # exactly what stage 1 saved
    assert json.loads(files["tmkd_student.json"])["num_heads"] == 3
    assert {"merged/config.json", "merged/model.safetensors", "merged/tokenizer.json"} <= set(files)
    assert len(safetensors_shapes(files["merged/model.safetensors"])["classifier.weight"]) == 2  # heads merged
    assert not [p for p in files if p.startswith(("teacher_logits/", "checkpoint-", "runs/"))]  # stay local
    assert [c["title"] for c in hub.commits(STAGE1_REPO)][-1].startswith("Upload TMKD stage-1 student")
    token = SENTINEL_TOKEN.encode()
    assert [p for p, data in files.items() if token in data] == []
    # usable as it is: merged/ loads without tmkd_hf and gives the multi-head student's combined logits
    assert stage1["merged_vs_multi_head_max_abs_diff"] <= 1e-5
    # a plain model pushed onto it is refused: the repo would mix the two
    assert "already holds another model" in stage1["plain_push_refused"]
    assert "a multi-head checkpoint); this student is" in stage1["plain_push_refused"]
    assert hub.unhandled == []


def test_stage1_card_says_what_it_is(stage1):
    card, text = stage1["card"], stage1["card_text"]
    assert {"knowledge-distillation", "tmkd", "tmkd-stage1"} <= set(card["tags"])
    assert "model-index" not in card and "library_name" not in card  # not a task model; the root needs tmkd_hf
    assert "general question–passage (Q&A) distillation pre-trained student" in text
    assert "**not a task model**" in text
    assert "learned only from 3 teachers' soft labels on 24 unlabelled question–passage pairs" in text
    for i in range(3):  # the teachers, head i <-> teacher i
        assert f"| {i} | `named-teacher-{i}` | local, weights sha256 `" in text
    assert "name: pool.tsv, rows: 24, trained on: 18, held out: 6" in text  # the pool, its name and size
    assert str(Path(stage1["local_weights"]).parents[1]) not in text  # no local path is published
    assert "- **Architecture:** `BertForSequenceClassification`, 1 layer\n" in text
    sizes = stage1["parameters"]
    parameters = f"- **Parameters:** {sizes['all_heads']:,} with every head ({sizes['merged']:,} merged, in `merged/`)"
    assert parameters in text
    assert "- **Heads:** 3, one per teacher" in text
    assert "- **Readout:** [CLS], through the model's own classification head" in text
    assert "`0: entailment`, `1: not_entailment`" in text
    assert "## Agreement with the teachers on held-out pool pairs" in text and "held-out pool teacher_agreement" in text
    command = ("python recipes/run_glue_distill.py --model_name_or_path tester/tiny-stage1 \\\n"
               "    --teachers <teacher_0> <teacher_1> <teacher_2> \\\n")
    assert command in text
    assert "--stage1_student tester/tiny-stage1" in text
    assert 'AutoModelForSequenceClassification.from_pretrained("tester/tiny-stage1", subfolder="merged")' in text


def test_stage2_from_the_stage1_repo_id_continues_every_head(stage1):
    run = stage1["stage2"]
    assert run["downloaded"] == ["model.safetensors", "tmkd_student.json"]  # from the loopback Hub, root only
    assert run["num_heads"] == 3 and run["same_keys"] is True
    assert run["max_abs_diff"] == 0.0  # every weight at the start of stage 2, heads included, is the pushed one
    assert run["heads_trained"] is True  # ... and then trained
    assert run["card_base_model"] == STAGE1_REPO  # the stage-2 card names what it continued


def test_pipeline_with_stage1_student_skips_stage1_and_continues_from_it(stage1):
    from test_pipeline import check_progress_lines

    run = stage1["pipeline"]
    # no teacher, no stage-1 training: stage 2 (run_glue_distill.py, its output_dir the student's folder) and the
    # labels-only baseline
    assert run["trained"] == ["student", "runs/labels_only"]
    assert "stage1" not in run["seconds"] and not any("stage1:" in line for line in run["log"].splitlines())
    assert run["num_heads"] == 3 and run["max_abs_diff"] == 0.0  # stage 2 starts from the pushed student
    assert run["labelled"] == ["train"]  # the unlabelled pool is not labelled: nothing would read it
    assert run["stage1_path"] == STAGE1_REPO and run["stage1_only_accuracy"] is not None
    check_progress_lines(run["log"], ["labelling", "stage2", "labels_only", "evaluation", "speed", "results"])
    assert f"stage 1 not run (continued from {STAGE1_REPO})" in run["results_md"]


# ----- upload_student_folder: new repo, another model's repo, 401 / 403 -----


@pytest.fixture(scope="module")
def publishing(hub, tmp_path_factory):
    hub.fail("POST", r"^/api/models/tester/unauthorized/commit/", 401)
    hub.fail("POST", r"^/api/models/tester/forbidden/commit/", 403)
    try:
        return run_child("publishing", hub, tmp_path_factory.mktemp("publishing"))
    finally:
        hub.clear_failures()


def test_upload_student_folder_publishes_refuses_replaces_and_names_auth_errors(publishing, hub):
    assert publishing["uploaded_loads"] == "BertForSequenceClassification"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(hub.files("tester/folder-upload"))
    assert "'tester/taken' already holds another model (model_type 'roberta'" in publishing["taken"]
    assert "replace_existing_model=True" in publishing["taken"]
    assert publishing["replaced"] is None and publishing["replaced_class"] == "bert"  # replace_existing_model=True
    assert "401 Unauthorized" in publishing["unauthorized"] and "Nothing was lost" in publishing["unauthorized"]
    assert "no write access" in publishing["forbidden"] and "403 Forbidden" in publishing["forbidden"]


@pytest.mark.parametrize("kind", ["cross-encoder", "multi-head"])
def test_a_mean_readout_student_loads_by_hub_id_as_trained(publishing, kind):
    """A CrossEncoder export (or a multi-head checkpoint) on the Hub is read as what it is, not as a plain encoder
    given a fresh head: the same logits as the local directory, by `load_classifier` and as a labelling teacher."""
    result = publishing["by_id"][kind]
    assert result["spread"] > 1e-3  # the logits depend on the input: the comparison can fail
    assert result["diff"] <= 1e-6 and result["label_diff"] <= 1e-5, result
    if kind == "cross-encoder":
        assert {"modules.json", "1_Pooling/config.json", "2_Dense/model.safetensors"} <= set(result["snapshot_files"])
    else:
        assert "tmkd_student.json" in result["snapshot_files"]
    assert publishing["plain_by_id"] is None  # a plain checkpoint still loads the plain way


# ----- failures: clear message, local output kept -----


@pytest.mark.parametrize("case", ["no_token", "server_error", "unreachable", "other_model"])
def test_push_failure_is_clear_and_keeps_the_local_model(failures, case):
    result = failures[case]
    assert result["error_type"] == "HubPushError", result
    assert result["local_model_loads"] is True, result
    assert result["local_card"] is True, result
    assert "Nothing was lost" in result["message"] and result["output_dir"] in result["message"]
    expected = {
        "no_token": "needs a Hugging Face token",
        "server_error": "server error (500)",
        "unreachable": "could not reach the Hub",
        "other_model": "already holds another model",
    }[case]
    assert expected in result["message"], result["message"]


def test_other_model_repo_is_untouched(failures, hub):
    assert json.loads(hub.files("tester/other-model")["config.json"])["model_type"] == "roberta"


def test_push_to_hub_without_a_token_is_a_clear_error_when_the_trainer_is_built(tmp_path, monkeypatch):
    """`Trainer.__init__` creates the repo when `push_to_hub=True`: without a token, say how to give one (offline)."""
    from conftest import tiny_model

    from tmkd_hf import DistillationArguments, HubPushError, MultiHeadStudent, MultiTeacherDistillationTrainer, hub

    monkeypatch.setattr(hub, "get_token", lambda: None)  # no token from HF_TOKEN or a stored login either
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id="tester/no-token", report_to="none",
        use_cpu=True,
    )
    with pytest.raises(HubPushError, match="needs a Hugging Face token, and none was found: pass a token"):
        MultiTeacherDistillationTrainer(model=MultiHeadStudent(tiny_model("bert"), 3), args=args)


def test_a_hub_failure_when_the_trainer_is_built_is_a_clear_error(tmp_path, monkeypatch):
    """With a token but no way to reach the Hub (this session is offline), the repo creation in `Trainer.__init__`
    says why in a `HubPushError` instead of huggingface_hub's raw exception."""
    from conftest import tiny_model

    from tmkd_hf import DistillationArguments, HubPushError, MultiHeadStudent, MultiTeacherDistillationTrainer, hub

    monkeypatch.setattr(hub, "get_token", lambda: "hf_not_a_real_token")
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id="tester/offline", report_to="none",
        use_cpu=True,
    )
    with pytest.raises(HubPushError, match="Could not create or access the Hub repository 'tester/offline'"):
        MultiTeacherDistillationTrainer(model=MultiHeadStudent(tiny_model("bert"), 3), args=args)


def test_names_moved_out_of_the_hub_module_still_work_with_a_warning(tmp_path):
    from conftest import tiny_model

    from tmkd_hf import DistillationArguments, MultiHeadStudent, MultiTeacherDistillationTrainer, hub, model_card

    student = MultiHeadStudent(tiny_model("bert"), 3)
    with pytest.warns(FutureWarning, match="use tmkd_hf.model_card.published_num_parameters"):
        assert hub.published_num_parameters(student) == model_card.published_num_parameters(student)
    trainer = MultiTeacherDistillationTrainer(
        model=student, args=DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    )
    with pytest.warns(FutureWarning, match=r"use tmkd_hf.model_card.StudentCardData.from_trainer"):
        old = hub.trainer_card_data(trainer, license="mit")
    assert old == model_card.StudentCardData.from_trainer(trainer, license="mit") and old.license == "mit"


# ----- the child side (run as `python tests/test_hub.py <scenario> <tmp_dir> <result.json>`) -----


def _child_setup(tmp: Path):
    import torch
    from conftest import WORDS, pair_dataset, tiny_model, tokenize
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    teachers = []
    for i in range(3):
        path = tmp / f"teacher-{i}"
        tiny_model("bert", seed=100 + i, head_scale=20.0).save_pretrained(path)
        tokenizer.save_pretrained(path)
        teachers.append(str(path))
    torch.manual_seed(0)
    return tokenizer, teachers, pair_dataset, tiny_model, tokenize


def _make_trainer(tmp: Path, name: str, tokenizer, train, dev, tiny_model, **overrides):
    from tmkd_hf import DistillationArguments, MultiHeadStudent, MultiTeacherDistillationTrainer

    base = tiny_model("bert", seed=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.config._name_or_path = "google/bert_uncased_L-2_H-128_A-2"  # as if initialised from this Hub model
    args = dict(
        output_dir=str(tmp / name),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=4,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=2,
        seed=0,
    )
    args.update(overrides)
    return MultiTeacherDistillationTrainer(
        model=MultiHeadStudent(base, 3),
        args=DistillationArguments(**args),
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
    )


def child_roundtrip(tmp: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForSequenceClassification, pipeline

    from tmkd_hf import label_with_teachers, read_manifest
    from tmkd_hf.hub import push_teacher_logits_to_hub

    tokenizer, teachers, pair_dataset, tiny_model, tokenize = _child_setup(tmp)
    labelled = label_with_teachers(pair_dataset(32, seed=1), teachers, output_dir=tmp / "logits", show_progress=False)
    train = tokenize(labelled, tokenizer)
    dev, test = tokenize(pair_dataset(16, seed=2), tokenizer), tokenize(pair_dataset(16, seed=3), tokenizer)
    trainer = _make_trainer(
        tmp,
        "out",
        tokenizer,
        train,
        dev,
        tiny_model,
        push_to_hub=True,
        hub_model_id=REPO,
        hub_token=SENTINEL_TOKEN,
        hub_strategy="checkpoint",
        save_strategy="steps",
        save_steps=2,
    )
    trainer.compute_metrics = lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}
    trainer.train()
    metrics = {"validation": trainer.evaluate(), "test": trainer.predict(test).metrics}
    trainer.push_to_hub(
        license="apache-2.0",
        finetuned_from="google/bert_uncased_L-2_H-128_A-2",
        tasks="text-classification",
        dataset_tags="nyu-mll/glue",
        dataset_args="qnli",
        dataset="GLUE QNLI",
    )

    local = AutoModelForSequenceClassification.from_pretrained(tmp / "out").eval()
    remote = AutoModelForSequenceClassification.from_pretrained(REPO).eval()
    batch = tokenizer(["what city is the capital"], ["the river of the king"], return_tensors="pt")
    with torch.no_grad():
        diff = (local(**batch).logits - remote(**batch).logits).abs().max().item()
    classifier = pipeline("text-classification", model=REPO)
    labels = [out["label"] for out in classifier(["what city", "who was king"])]

    card = ModelCard.load(REPO)
    results = [
        {
            "split": r.dataset_split,
            "metric": r.metric_type,
            "value": r.metric_value,
            "dataset": r.dataset_type,
            "config": r.dataset_config,
        }
        for r in card.data.eval_results or []
    ]

    push_teacher_logits_to_hub(tmp / "logits", "tester/tiny-logits", token="dummy")
    snapshot = Path(snapshot_download("tester/tiny-logits", repo_type="dataset"))
    pulled = Dataset.from_parquet(str(snapshot / "data" / "train-00000-of-00001.parquet"))
    same = np.array_equal(np.asarray(pulled["teacher_logits"]), np.asarray(labelled["teacher_logits"]))
    manifest_equal = json.loads((snapshot / "tmkd_manifest.json").read_text()) == read_manifest(tmp / "logits")
    local_files = [p for p in (tmp / "out").rglob("*") if p.is_file()]
    return {
        "local_files_checked": len(local_files),
        "local_files_with_token": [str(p) for p in local_files if SENTINEL_TOKEN.encode() in p.read_bytes()],
        "max_abs_logit_diff": diff,
        "hub_model_class": type(remote).__name__,
        "pipeline_labels": labels,
        "metrics": {
            "validation": {k: v for k, v in metrics["validation"].items() if k == "eval_accuracy"},
            "test": {k: v for k, v in metrics["test"].items() if k == "test_accuracy"},
        },
        "card": card.data.to_dict(),
        "eval_results": results,
        "card_text": card.text,
        "logits_dataset": {"same_logits": bool(same), "manifest_equal": manifest_equal},
    }


def _load_recipe(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def child_stage1(tmp: Path) -> dict:
    """Stage 1 on tiny teachers and a 24-pair pool, pushed with --push_to_hub; then stage 2 (run_glue_distill.py) and
    the pipeline (stage1_student), both started from the repo id and downloading it from the loopback Hub."""
    import logging

    import safetensors.torch
    import torch
    from huggingface_hub import ModelCard, constants
    from transformers import AutoModelForSequenceClassification

    from tmkd_hf import HubPushError, MultiHeadStudent, MultiTeacherDistillationTrainer, upload_student_folder

    os.environ["HF_EVALUATE_OFFLINE"] = "1"  # the metrics' local implementation: nothing else to fetch
    tokenizer, _, pair_dataset, tiny_model, _ = _child_setup(tmp)
    names = {"id2label": {0: "entailment", 1: "not_entailment"}, "label2id": {"entailment": 0, "not_entailment": 1}}
    teachers = []
    for i in range(3):  # QNLI's labels, so the pipeline (which checks them) can use them too
        path = tmp / f"named-teacher-{i}"
        tiny_model("bert", seed=100 + i, head_scale=20.0, **names).save_pretrained(path)
        tokenizer.save_pretrained(path)
        teachers.append(str(path))
    pool = pair_dataset(24, seed=5, with_labels=False)
    (tmp / "pool.tsv").write_text("question\tsentence\n" + "".join(
        f"{q}\t{s}\n" for q, s in zip(pool["question"], pool["sentence"])))
    rows = pair_dataset(32, seed=1)
    for name, n in (("train", 32), ("dev", 16)):
        (tmp / f"{name}.tsv").write_text("index\tquestion\tsentence\tlabel\n" + "".join(
            f"{i}\t{q}\t{s}\t{names['id2label'][y]}\n"
            for i, (q, s, y) in enumerate(zip(rows["question"][:n], rows["sentence"][:n], rows["label"][:n]))))
    common = ["--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none", "--use_cpu",
              "--disable_tqdm", "true", "--save_strategy", "no", "--seed", "0"]

    # the weights each training run starts from, recorded as it starts
    starts = {}

    class Recording(MultiTeacherDistillationTrainer):
        def train(self, *args, **kwargs):
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            starts[self.args.output_dir] = (state, getattr(self.model, "num_heads", 1))
            return super().train(*args, **kwargs)

    stage1_recipe = _load_recipe("run_qa_distill_pretrain")
    stage1_recipe.main(["--dataset", str(tmp / "pool.tsv"), "--teachers", *teachers, "--student_layers", "0",
                        "--student_init_from", teachers[0], "--output_dir", str(tmp / "stage1"),
                        "--validation_split_percentage", "25", "--num_train_epochs", "1", *common, "--push_to_hub",
                        "--hub_model_id", STAGE1_REPO, "--hub_token", SENTINEL_TOKEN])
    pushed = safetensors.torch.load_file(str(tmp / "stage1" / "model.safetensors"))

    def compare(run_dir: str) -> dict:
        state, num_heads = starts[run_dir]
        return {"num_heads": num_heads, "same_keys": set(state) == set(pushed),
                "max_abs_diff": max((state[k] - pushed[k]).abs().max().item() for k in pushed if k in state)}

    # stage 2 from the repo id: downloaded from the loopback Hub (root only), every head continued
    glue = _load_recipe("run_glue_distill")
    glue.MultiTeacherDistillationTrainer = Recording
    stage2_dir = str(tmp / "stage2")
    glue.main(["--task_name", "qnli", "--train_file", str(tmp / "train.tsv"), "--validation_file",
               str(tmp / "dev.tsv"), "--model_name_or_path", STAGE1_REPO, "--teachers", *teachers, "--do_train",
               "--do_eval", "--max_steps", "2", "--output_dir", stage2_dir, *common])
    snapshots = list(Path(constants.HF_HUB_CACHE).glob("models--tester--tiny-stage1/snapshots/*"))
    downloaded = sorted(p.name for s in snapshots for p in s.iterdir() if p.name in ("model.safetensors",
                                                                                     "tmkd_student.json", "merged"))
    merged_after = AutoModelForSequenceClassification.from_pretrained(stage2_dir).classifier.weight.detach()
    start_heads = starts[stage2_dir][0]["model.classifier.weight"]
    stage2 = {**compare(stage2_dir), "downloaded": downloaded,
              "heads_trained": not torch.allclose(merged_after, start_heads.mean(0)),
              "card_base_model": ModelCard.load(Path(stage2_dir) / "README.md").data.base_model}

    # the pushed student used as it is: merged/ (plain transformers) against the multi-head root (tmkd_hf)
    merged = AutoModelForSequenceClassification.from_pretrained(STAGE1_REPO, subfolder="merged").eval()
    student = MultiHeadStudent.from_pretrained(STAGE1_REPO).eval()
    batch = tokenizer(["what city is the capital"], ["the river of the king"], return_tensors="pt")
    with torch.no_grad():
        diff = (merged(**batch).logits - student(**batch).logits).abs().max().item()
    card = ModelCard.load(STAGE1_REPO)
    try:  # a plain (merged) model pushed where the multi-head student lives is refused, not mixed in
        upload_student_folder(tmp / "stage1" / "merged", STAGE1_REPO, token="dummy")
        refused = None
    except HubPushError as err:
        refused = str(err)

    # the pipeline from the repo id: no stage 1, stage 2 from the pushed heads
    pipeline = _load_recipe("run_tmkd_pipeline")
    # the baseline's trainer; stage 2 runs run_glue_distill.main, the module loaded above (the pipeline imports it
    # from sys.modules), whose trainer records already
    pipeline.MultiTeacherDistillationTrainer = Recording
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("run_tmkd_pipeline").addHandler(handler)
    logging.getLogger("run_tmkd_pipeline").setLevel(logging.INFO)
    out = tmp / "pipeline"
    results = pipeline.main(["--backbone", teachers[0], "--student_backbone", teachers[0], "--teachers", *teachers,
                             "--stage1_student", STAGE1_REPO, "--output_dir", str(out), "--max_train_rows", "24",
                             "--max_unlabeled_rows", "8", "--max_eval_rows", "16", "--stage2_epochs", "1",
                             "--student_layers", "0", "--batch_size", "8", "--speed_repeats", "1"])
    trained = [os.path.relpath(d, out) for d in starts if d.startswith(str(out))]
    return {
        "local_weights": str(tmp / "stage1" / "model.safetensors"),
        "merged_vs_multi_head_max_abs_diff": diff,
        "parameters": {"all_heads": sum(p.numel() for p in student.parameters()),
                       "merged": sum(p.numel() for p in merged.parameters())},
        "card": card.data.to_dict(),
        "card_text": card.text,
        "plain_push_refused": refused,
        "stage2": stage2,
        "pipeline": {**compare(str(out / "student")), "trained": trained, "seconds": results["seconds"],
                     "log": "\n".join(lines), "labelled": sorted(p.name for p in (out / "labelled").iterdir()),
                     "stage1_path": results["paths"]["stage1_student"],
                     "stage1_only_accuracy": results["accuracy"]["test"].get("tmkd_stage1_only"),
                     "results_md": (out / "results.md").read_text()},
    }


def child_failures(tmp: Path) -> dict:
    import huggingface_hub.constants
    from huggingface_hub import HfApi
    from transformers import AutoModelForSequenceClassification

    from tmkd_hf.hub import HubPushError

    tokenizer, teachers, pair_dataset, tiny_model, tokenize = _child_setup(tmp)
    train = tokenize(pair_dataset(16, seed=1), tokenizer)

    def attempt(name: str, repo_id: str, token: str | None) -> dict:
        trainer = _make_trainer(tmp, name, tokenizer, train, None, tiny_model, alpha=0.0, hub_model_id=repo_id)
        out = tmp / name
        try:
            trainer.push_to_hub(token=token)
            error_type, message = None, ""
        except HubPushError as err:
            error_type, message = type(err).__name__, str(err)
        except Exception as err:  # noqa: BLE001 - reported to the parent, which asserts on it
            error_type, message = type(err).__name__, repr(err)
        try:
            AutoModelForSequenceClassification.from_pretrained(out)
            loads = not (out / "tmkd_student.json").exists()
        except Exception:  # noqa: BLE001
            loads = False
        return {
            "error_type": error_type,
            "message": message,
            "output_dir": str(out),
            "local_model_loads": loads,
            "local_card": (out / "README.md").is_file(),
        }

    results = {"no_token": attempt("no-token", "tester/no-token", None)}
    results["server_error"] = attempt("server-error", "tester/server-error", "dummy")
    # another model already lives in the repo: a 3-label RoBERTa
    other = tmp / "other-model"
    tiny_model("roberta", num_labels=3).save_pretrained(other)
    HfApi().create_repo("tester/other-model", token="dummy")
    HfApi().upload_folder(repo_id="tester/other-model", folder_path=str(other), token="dummy")
    results["other_model"] = attempt("other-model", "tester/other-model", "dummy")
    # nothing listens on the endpoint (HfApi reads the endpoint when it is created)
    huggingface_hub.constants.ENDPOINT = "http://127.0.0.1:9"
    results["unreachable"] = attempt("unreachable", "tester/unreachable", "dummy")
    return results


def child_publishing(tmp: Path) -> dict:
    """`upload_student_folder` on its own: a new repo, a repo holding another model (refused, then replaced with
    `replace_existing_model=True`), and the 401 / 403 answers of the Hub."""
    from huggingface_hub import HfApi
    from transformers import AutoModelForSequenceClassification

    from tmkd_hf import HubPushError, MultiHeadStudent, upload_student_folder

    tokenizer, _, _, tiny_model, _ = _child_setup(tmp)
    folder = tmp / "student"
    MultiHeadStudent(tiny_model("bert", seed=5), 3).save_pretrained(folder, merged=True, tokenizer=tokenizer)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# a student\n")
    results = {}
    upload_student_folder(folder, "tester/folder-upload", token="dummy")
    uploaded = AutoModelForSequenceClassification.from_pretrained("tester/folder-upload")
    results["uploaded_loads"] = type(uploaded).__name__
    other = tmp / "other"
    tiny_model("roberta", num_labels=3).save_pretrained(other)
    HfApi().create_repo("tester/taken", token="dummy")
    HfApi().upload_folder(repo_id="tester/taken", folder_path=str(other), token="dummy")

    def attempt(repo_id, **kwargs):
        try:
            upload_student_folder(folder, repo_id, token="dummy", **kwargs)
            return None
        except HubPushError as err:
            return str(err)

    results["taken"] = attempt("tester/taken")
    results["replaced"] = attempt("tester/taken", replace_existing_model=True)
    results["replaced_class"] = AutoModelForSequenceClassification.from_pretrained(
        "tester/taken", force_download=True
    ).config.model_type
    results["unauthorized"] = attempt("tester/unauthorized")
    results["forbidden"] = attempt("tester/forbidden")

    # by Hub id, load_classifier / label_with_teachers read a mean-readout student's CrossEncoder export (not a
    # plain encoder with a fresh head) and a multi-head checkpoint, each with the local model's logits
    import torch

    from tmkd_hf import label_with_teachers, load_classifier
    from tmkd_hf.teachers import tmkd_classifier_dir

    batch = tokenizer(["what city is the capital", "who was king"], ["the river of the king", "a city"],
                      return_tensors="pt", padding=True)
    results["by_id"] = {}
    for kind, merged in (("cross-encoder", True), ("multi-head", False)):
        local = tmp / kind
        student = MultiHeadStudent(tiny_model("bert", seed=7), 3, readout="mean")
        with torch.no_grad():  # heads far from zero and from each other: logits that differ by input and head
            for name, param in student.named_parameters():
                if "classifier" in name:
                    param.normal_(0, 1)
        student.save_pretrained(local, merged=merged, tokenizer=tokenizer)
        repo = f"tester/{kind}"
        if merged:
            upload_student_folder(local, repo, token="dummy")
        else:  # as run_qa_distill_pretrain.py --push_to_hub publishes a stage-1 student (every head at the root)
            HfApi().create_repo(repo, token="dummy")
            HfApi().upload_folder(repo_id=repo, folder_path=str(local), token="dummy")
        with torch.no_grad():
            want = load_classifier(local)(**batch).logits
            got = load_classifier(repo)(**batch).logits
        labelled = label_with_teachers(
            _pairs(), [repo], output_dir=tmp / f"labels-{kind}", show_progress=False, batch_size=2
        )
        results["by_id"][kind] = {
            "diff": (want - got).abs().max().item(),
            "spread": (want[0] - want[1]).abs().max().item(),
            "label_diff": (torch.tensor(labelled["teacher_logits"])[:, 0] - want).abs().max().item(),
            "snapshot_files": sorted(str(p.relative_to(tmkd_classifier_dir(repo))) for p in
                                     Path(tmkd_classifier_dir(repo)).rglob("*") if p.is_file()),
        }
    results["plain_by_id"] = tmkd_classifier_dir("tester/folder-upload")
    return results


def _pairs():
    from datasets import Dataset

    return Dataset.from_dict({"question": ["what city is the capital", "who was king"],
                              "sentence": ["the river of the king", "a city"]})


if __name__ == "__main__":
    scenario, tmp_dir, result_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    outcome = {"roundtrip": child_roundtrip, "failures": child_failures, "publishing": child_publishing,
               "stage1": child_stage1}[scenario](tmp_dir)
    Path(result_file).write_text(json.dumps(outcome, default=str))
