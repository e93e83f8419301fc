"""tmkd_hf.tasks: task specs, file loading, label alignment, metrics (local twins of evaluate's) and MAP/MRR."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error
from transformers import BertConfig, EvalPrediction

from tmkd_hf import tasks
from tmkd_hf.tasks import (
    build_compute_metrics,
    custom_task,
    encode_labels,
    get_task,
    label_values,
    load_metric,
    load_rows,
    local_metric,
    ranking_metrics,
    resolve_label_names,
)

# ----- task specs -----


def test_every_glue_task_and_wikiqa_is_known():
    for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "wikiqa"):
        assert get_task(name).name == name
    assert get_task("SST-2").name == "sst2" and get_task("sts-b").name == "stsb"
    assert get_task("stsb").is_regression and get_task("stsb").label_names is None
    assert get_task("mnli").validation_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")  # the Hub ClassLabel order
    assert get_task("wikiqa").is_ranking and not get_task("qnli").is_ranking
    with pytest.raises(ValueError, match=r"Unknown task 'squad'.*'qnli'"):
        get_task("squad")


def test_columns_are_found_under_their_other_published_names():
    mnli = get_task("mnli")
    glue_tsv = ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    assert mnli.resolve_columns(glue_tsv) == (["sentence1", "sentence2"], "gold_label", None)
    assert mnli.resolve_columns(["premise", "hypothesis", "label"]) == (["premise", "hypothesis"], "label", None)
    wikiqa = get_task("wikiqa")
    published = ["QuestionID", "Question", "DocumentID", "DocumentTitle", "SentenceID", "Sentence", "Label"]
    assert wikiqa.resolve_columns(published) == (["Question", "Sentence"], "Label", "QuestionID")
    hub = ["question_id", "question", "document_title", "answer", "label"]
    assert wikiqa.resolve_columns(hub) == (["question", "answer"], "label", "question_id")
    assert get_task("mrpc").resolve_columns(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"])[1] == "Quality"
    # test data may lack labels; a missing text column is an error naming what exists
    assert get_task("qnli").resolve_columns(["question", "sentence"], need_label=False)[1] is None
    with pytest.raises(ValueError, match=r"no column \['sentence'\].*columns are \['question', 'label'\]"):
        get_task("qnli").resolve_columns(["question", "label"], "the training data")
    with pytest.raises(ValueError, match=r"also accepted"):
        mnli.resolve_columns(["premise", "label"])


def test_custom_task_metrics():
    assert custom_task(["text"]).metrics == (("accuracy", None),)
    assert custom_task(["a", "b"], is_regression=True).metrics == (("mse", None),)
    assert custom_task(["q", "a"], group_column="qid").is_ranking
    with pytest.raises(ValueError, match="one or two"):
        custom_task(["a", "b", "c"])


# ----- loading files -----


def test_load_rows_reads_every_format(tmp_path):
    rows = {"question": ["who built it", 'the "old" king'], "sentence": ["a city", ""], "label": ["yes", "no"]}
    ds = Dataset.from_dict(rows)
    # GLUE-style TSV: quotes inside sentences, no quoting; an empty cell stays an empty string
    lines = ["question\tsentence\tlabel"] + [f"{q}\t{s}\t{lab}" for q, s, lab in zip(*rows.values())]
    (tmp_path / "d.tsv").write_text("\n".join(lines) + "\n")
    ds.to_csv(tmp_path / "d.csv", index=False)
    ds.to_json(tmp_path / "d.jsonl")
    (tmp_path / "d.json").write_text(json.dumps([dict(zip(rows, v)) for v in zip(*rows.values())]))
    ds.to_parquet(tmp_path / "d.parquet")
    ds.save_to_disk(tmp_path / "saved")
    DatasetDict(train=ds, validation=ds.select([1])).save_to_disk(tmp_path / "dict")
    cache = str(tmp_path / "cache")
    for name in ("d.tsv", "d.csv", "d.jsonl", "d.json", "d.parquet", "saved"):
        loaded = load_rows(tmp_path / name, cache_dir=cache)
        assert {c: list(loaded[c]) for c in rows} == rows, name
    assert list(load_rows(tmp_path / "dict", split="validation")["question"]) == ['the "old" king']
    assert len(load_rows(tmp_path / "d.tsv", max_rows=1, cache_dir=cache)) == 1
    with pytest.raises(ValueError, match="splits"):
        load_rows(tmp_path / "dict", split="test")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="Unsupported file type"):
        load_rows(tmp_path / "d.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows(tmp_path / "missing.tsv")


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(tasks, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"Cannot load 'nyu-mll/glue'.*give local files"):
        load_rows("nyu-mll/glue", config_name="qnli")


# ----- labels -----


def named_config(names):
    return BertConfig(
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )


def test_label_names_come_from_the_model_then_the_task_then_the_data():
    mnli, custom = get_task("mnli"), custom_task(["text"])
    data = ["neutral", "entailment", "contradiction"]
    # a model with real names decides the order (matched case-insensitively)
    model = named_config(["CONTRADICTION", "NEUTRAL", "ENTAILMENT"])
    assert resolve_label_names(mnli, data, model) == ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]
    # transformers' default LABEL_i names carry no meaning: the task's order
    assert resolve_label_names(mnli, data, BertConfig(num_labels=3)) == ["entailment", "neutral", "contradiction"]
    # custom data: sorted names, numbers in numeric order
    assert resolve_label_names(custom, ["b", "a", None, "c"], BertConfig()) == ["a", "b", "c"]
    assert resolve_label_names(custom, ["10", "2", "1"], None) == ["1", "2", "10"]
    # labels the model does not know: an error naming both label sets
    with pytest.raises(ValueError, match=r"\['negative', 'positive'\] do not match the model's labels \['CONTRA"):
        resolve_label_names(custom, ["positive", "negative"], model)
    assert resolve_label_names(custom, ["positive", "negative"], model, use_model_labels=False) == [
        "negative",
        "positive",
    ]
    with pytest.raises(ValueError, match=r"\['maybe'\] are not labels of task 'qnli'"):
        resolve_label_names(get_task("qnli"), ["entailment", "maybe"])


def test_label_values_understand_classlabel_task_ids_and_strings():
    hub = Dataset.from_dict(
        {"label": [0, 2, -1]},
        features=Features({"label": ClassLabel(names=["entailment", "neutral", "contradiction"])}),
    )
    assert label_values(hub, "label") == ["entailment", "contradiction", None]  # -1: GLUE's unlabelled test rows
    ints = Dataset.from_dict({"label": [1, 0]})
    assert label_values(ints, "label", get_task("qnli")) == ["not_entailment", "entailment"]
    assert label_values(ints, "label", custom_task(["t"])) == ["1", "0"]
    assert label_values(Dataset.from_dict({"label": ["pos ", "", None]}), "label") == ["pos", None, None]


def test_encode_labels_maps_names_to_ids_and_refuses_unseen_labels():
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "gold": ["Neutral", "entailment", None]})
    encoded = encode_labels(ds, "gold", ["entailment", "neutral", "contradiction"], what="train")
    assert encoded.column_names == ["text", "label"] and list(encoded["label"]) == [1, 0, -100]
    with pytest.raises(ValueError, match=r"1 row\(s\) without a label.*rows \[2\]"):
        encode_labels(ds, "gold", ["entailment", "neutral", "contradiction"], allow_missing=False)
    with pytest.raises(ValueError, match=r"the dev set has labels \['Neutral'\] that are not in the label set"):
        encode_labels(ds, "gold", ["entailment", "contradiction"], what="the dev set")
    scores = Dataset.from_dict({"score": ["4.5", "", "1"]})
    values = list(encode_labels(scores, "score", None)["label"])
    assert values[0] == 4.5 and math.isnan(values[1]) and values[2] == 1.0
    with pytest.raises(ValueError, match="regression task"):
        encode_labels(Dataset.from_dict({"score": ["high"]}), "score", None)


# ----- metrics -----


@pytest.mark.parametrize("seed", [0, 1])
def test_local_metrics_match_scikit_learn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    p2, r2 = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    p3, r3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    x = rng.normal(size=150)
    y = np.round(x + rng.normal(size=150), 1)  # rounded: ties for the Spearman ranks
    assert local_metric(("glue", "cola"), p2, r2) == pytest.approx({"matthews_correlation": matthews_corrcoef(r2, p2)})
    assert local_metric(("glue", "mrpc"), p2, r2) == pytest.approx(
        {"accuracy": accuracy_score(r2, p2), "f1": f1_score(r2, p2)}
    )
    assert local_metric(("glue", "qqp"), p2, r2)["f1"] == pytest.approx(f1_score(r2, p2))
    for config in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert local_metric(("glue", config), p3, r3) == pytest.approx({"accuracy": accuracy_score(r3, p3)})
    assert local_metric(("glue", "stsb"), x, y) == pytest.approx(
        {"pearson": pearsonr(x, y)[0], "spearmanr": spearmanr(x, y)[0]}, rel=1e-10
    )
    assert local_metric(("accuracy", None), p3, r3)["accuracy"] == pytest.approx(accuracy_score(r3, p3))
    assert local_metric(("f1", None), p2, r2)["f1"] == pytest.approx(f1_score(r2, p2))
    assert local_metric(("mse", None), x, y)["mse"] == pytest.approx(mean_squared_error(y, x))
    # multi-class Matthews too
    assert local_metric(("glue", "cola"), p3, r3)["matthews_correlation"] == pytest.approx(matthews_corrcoef(r3, p3))


def test_local_metrics_edge_cases_follow_scikit_learn():
    zeros = np.zeros(6, dtype=int)
    assert local_metric(("glue", "mrpc"), zeros, zeros) == {"accuracy": 1.0, "f1": 0.0}  # nothing positive
    assert local_metric(("glue", "cola"), zeros, np.array([0, 1, 0, 1, 0, 1]))["matthews_correlation"] == 0.0
    assert math.isnan(local_metric(("glue", "stsb"), np.ones(4), np.arange(4.0))["pearson"])
    with pytest.raises(ValueError, match="local implementation"):
        local_metric(("bleu", None), zeros, zeros)


class FakeMetric:
    def __init__(self, key, value):
        self.key, self.value, self.calls = key, value, []

    def compute(self, predictions, references):
        self.calls.append((np.asarray(predictions).tolist(), np.asarray(references).tolist()))
        return {self.key: self.value}


def online(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def test_online_metrics_come_from_evaluate_load(monkeypatch):
    import evaluate

    online(monkeypatch)
    loaded = {}

    def fake_load(path, config_name=None, **kwargs):
        key = "accuracy" if path in ("glue", "accuracy") else path
        loaded[(path, config_name)] = FakeMetric(key, 0.25)
        return loaded[(path, config_name)]

    monkeypatch.setattr(evaluate, "load", fake_load)
    compute = build_compute_metrics(get_task("qnli"))
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    assert compute(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0]))) == {"accuracy": 0.25}
    assert loaded[("glue", "qnli")].calls == [([1, 0, 1], [1, 0, 0])]  # argmax predictions, as run_glue.py
    # several modules: merged, and run_glue's combined_score is their mean
    compute = build_compute_metrics(custom_task(["q", "a"], group_column="qid"), ["0", "1"], groups=["a", "a", "b"])
    metrics = compute(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0])))
    assert set(loaded) >= {("accuracy", None), ("f1", None)}
    assert metrics["accuracy"] == 0.25 and metrics["f1"] == 0.25 and {"map", "mrr", "combined_score"} <= set(metrics)


def test_evaluate_load_failing_falls_back_to_the_local_twin_with_a_warning(monkeypatch, caplog):
    import evaluate

    online(monkeypatch)

    def broken(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(evaluate, "load", broken)
    with caplog.at_level(logging.WARNING, logger="tmkd_hf.tasks"):
        metric = load_metric(get_task("mrpc"))
    assert "evaluate.load failed" in caplog.text and "no network" in caplog.text
    p, r = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert metric(p, r) == pytest.approx({"accuracy": 0.75, "f1": f1_score(r, p)})


def test_offline_never_calls_evaluate(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate, "load", lambda *a, **k: pytest.fail("evaluate.load called offline"))
    assert load_metric(get_task("cola"))(np.array([0, 1]), np.array([0, 1])) == {"matthews_correlation": 1.0}


def test_stsb_compute_metrics_adds_combined_score(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preds = np.array([[0.5], [1.5], [3.0], [2.0]])
    refs = np.array([1.0, 2.0, 4.0, 2.5], dtype=np.float32)
    metrics = build_compute_metrics(get_task("stsb"))(EvalPrediction(predictions=preds, label_ids=refs))
    assert metrics["pearson"] == pytest.approx(pearsonr(preds[:, 0], refs)[0])
    assert metrics["spearmanr"] == pytest.approx(1.0)
    assert metrics["combined_score"] == pytest.approx((metrics["pearson"] + 1.0) / 2)


# ----- ranking: MAP and MRR per question -----


def test_map_and_mrr_by_hand():
    # q1: scores rank rows 0 (irrelevant), 2 (relevant), 1 (relevant): relevant at ranks 2 and 3
    #     AP = (1/2 + 2/3) / 2 = 7/12, RR = 1/2
    # q2: relevant row ranked 2nd of 2: AP = 1/2, RR = 1/2
    # q3: no relevant candidate: left out of MAP and MRR (WikiQA convention)
    # q4: one candidate, relevant: AP = RR = 1
    scores = [0.9, 0.1, 0.5, 0.2, 0.8, 0.3, 0.4, 0.7]
    relevant = [0, 1, 1, 1, 0, 0, 0, 1]
    groups = ["q1", "q1", "q1", "q2", "q2", "q3", "q3", "q4"]
    metrics = ranking_metrics(scores, relevant, groups)
    assert metrics["map"] == pytest.approx((7 / 12 + 1 / 2 + 1) / 3)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    # rows of one question need not be contiguous
    order = [7, 0, 3, 5, 1, 6, 2, 4]
    shuffled = ranking_metrics([scores[i] for i in order], [relevant[i] for i in order], [groups[i] for i in order])
    assert shuffled == pytest.approx(metrics)


def test_ranking_ties_keep_row_order_and_no_answer_at_all_is_nan():
    assert ranking_metrics([0.5, 0.5, 0.5], [0, 1, 0], ["q"] * 3) == {"map": 0.5, "mrr": 0.5}
    assert ranking_metrics([0.5, 0.5], [1, 0], ["q"] * 2) == {"map": 1.0, "mrr": 1.0}
    nothing = ranking_metrics([0.1, 0.2], [0, 0], ["q", "r"])
    assert math.isnan(nothing["map"]) and math.isnan(nothing["mrr"])
    with pytest.raises(ValueError, match="one of each per row"):
        ranking_metrics([0.1], [1, 0], ["q", "q"])


def test_wikiqa_compute_metrics_ranks_by_the_relevant_label(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wikiqa = get_task("wikiqa")
    # label order of a model that lists "1" (relevant) first: the relevant label is id 0 here
    logits = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, 1.5]])
    refs = np.array([0, 1, 0, 1, 0])  # relevant rows: 0, 2, 4
    groups = ["a", "a", "a", "b", "b"]
    metrics = build_compute_metrics(wikiqa, ["1", "0"], groups=groups)(EvalPrediction(logits, refs))
    # relevance margins (same order as the log-probabilities): rows -1, 2, 1 | -3, -0.5
    # question a: ranked rows 1, 2 (relevant), 0 (relevant): AP = (1/2 + 2/3) / 2 = 7/12, RR = 1/2
    # question b: ranked rows 4 (relevant), 3: AP = RR = 1
    assert metrics["map"] == pytest.approx((7 / 12 + 1) / 2)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    predicted = logits.argmax(-1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(refs, predicted)) == pytest.approx(2 / 5)
    assert metrics["f1"] == pytest.approx(f1_score(refs == 0, predicted == 0))  # F1 of the relevant class
    assert metrics["combined_score"] == pytest.approx(np.mean([metrics[k] for k in ("accuracy", "f1", "map", "mrr")]))
    with pytest.raises(ValueError, match="group ids"):
        build_compute_metrics(wikiqa, ["0", "1"], groups=["a"])(EvalPrediction(logits, refs))
    with pytest.raises(ValueError, match="pass groups"):
        build_compute_metrics(wikiqa, ["0", "1"])
    with pytest.raises(ValueError, match="needs two labels"):
        build_compute_metrics(wikiqa, ["0", "1", "2"], groups=groups)
