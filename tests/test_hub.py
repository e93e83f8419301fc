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
    return results


if __name__ == "__main__":
    scenario, tmp_dir, result_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    outcome = {"roundtrip": child_roundtrip, "failures": child_failures, "publishing": child_publishing}[scenario](
        tmp_dir
    )
    Path(result_file).write_text(json.dumps(outcome, default=str))
