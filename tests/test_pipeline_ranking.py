"""Ranking metrics in the main job (`recipes/run_tmkd_pipeline.py --group_column`) and its nothing-to-distil warning,
judged by the task's main metric (MAP with a group column, else Matthews correlation)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import load_recipe, tiny_config
from transformers import AutoModel

from tmkd_hf.tasks import expected_random_ap, expected_random_rr, random_ranking_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["entailment", "not_entailment"]  # sorted, as the pipeline orders them: the relevant label has id 0


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("run_tmkd_pipeline")


def logits_for(p_relevant) -> np.ndarray:
    """Two-class logits whose softmax gives probability `p_relevant` to "entailment" (id 0)."""
    p = np.asarray(p_relevant, dtype=np.float64)
    return np.stack([np.log(p), np.log1p(-p)], axis=-1).astype(np.float32)


# Three questions with a relevant candidate, one without (left out), rows interleaved: groups are found by value.
#   q1: scores .9 .1 .8 .3, relevant rows 0 and 1 -> ranked 0 (rel), 2, 3, 1 (rel): AP = (1/1 + 2/4) / 2 = 0.75, RR 1
#   q2: scores .2 .7 .4, relevant row 1 -> rank 1: AP 1, RR 1
#   q3: scores .6 .5 .1, relevant row 2 -> rank 3: AP 1/3, RR 1/3
#   q4: two candidates, none relevant: no answer to rank, left out of both
# MAP = (0.75 + 1 + 1/3) / 3 = 25/36, MRR = (1 + 1 + 1/3) / 3 = 7/9.
HAND = [  # (group, p(entailment), relevant)
    ("q1", 0.9, True), ("q2", 0.2, False), ("q3", 0.6, False), ("q1", 0.1, True), ("q4", 0.7, False),
    ("q2", 0.7, True), ("q1", 0.8, False), ("q3", 0.5, False), ("q2", 0.4, False), ("q1", 0.3, False),
    ("q4", 0.2, False), ("q3", 0.1, True),
]  # fmt: skip


def test_ranking_scores_match_hand_computed_map_and_mrr(recipe):
    groups = [g for g, _, _ in HAND]
    labels = np.array([0 if relevant else 1 for *_, relevant in HAND])
    logits = logits_for([p for _, p, _ in HAND])
    scores = recipe.ranking_scores(logits, labels, groups, LABELS, 0, ["question", "sentence"], "qid")
    assert scores["map"] == pytest.approx(25 / 36) and scores["mrr"] == pytest.approx(7 / 9)
    # the ensemble's score: the log of its mean probability, the same ranking (two teachers at .2 and .6 of .4)
    ensemble = recipe.ensemble_log_probs([logits_for([p - 0.05 for _, p, _ in HAND]),
                                          logits_for([p + 0.05 for _, p, _ in HAND])])
    assert np.exp(ensemble)[:, 0] == pytest.approx([p for _, p, _ in HAND], abs=1e-6)
    assert recipe.ranking_scores(ensemble, labels, groups, LABELS, 0, ["question"], "qid") == pytest.approx(scores)
    # the relevant label's id decides: the other label's probability ranks the other way
    flipped = recipe.ranking_scores(logits, 1 - labels, groups, LABELS[::-1], 1, ["question"], "qid")
    assert flipped == pytest.approx(scores)


def test_ensemble_log_probs_keep_confident_rows_apart(recipe):
    """Probabilities in float32 round confident rows to 1.0 (a tie, broken by row order); the log-space mean does
    not: the more confident row ranks first."""
    logits = [np.array([[20.0, 0.0], [30.0, 0.0]], dtype=np.float32)] * 2
    assert recipe.softmax(logits[0])[0, 0] == recipe.softmax(logits[0])[1, 0] == 1.0
    log_probs = recipe.ensemble_log_probs(logits)
    assert log_probs[1, 0] > log_probs[0, 0]
    assert np.exp(log_probs).sum(-1) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("n, r", [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3), (7, 7), (8, 1)])
def test_random_ranking_chance_is_the_mean_over_every_order(n, r):
    """The exact expected AP / RR of a random ranking equals their mean over all n! orders of the candidates."""
    from tmkd_hf.tasks import ranking_metrics

    relevant = np.array([True] * r + [False] * (n - r))
    aps, rrs = [], []
    for order in itertools.permutations(range(n)):
        scores = -np.asarray(order, dtype=np.float64)  # candidate order[k] ... ranked by position
        m = ranking_metrics(scores, relevant, ["q"] * n)
        aps.append(m["map"])
        rrs.append(m["mrr"])
    assert expected_random_ap(n, r) == pytest.approx(np.mean(aps), abs=1e-12)
    assert expected_random_rr(n, r) == pytest.approx(np.mean(rrs), abs=1e-12)


def test_random_ranking_metrics_average_per_question():
    relevant = np.array([True, False, True, False, False, False, True])
    groups = ["a", "a", "b", "b", "b", "c", "c"]  # a: 1 of 2, b: 1 of 3, c: 1 of 2
    chance = random_ranking_metrics(relevant, groups)
    assert chance["map"] == pytest.approx((0.75 + 11 / 18 + 0.75) / 3)  # 1 of 3: (1 + 1/2 + 1/3) / 3
    assert chance["mrr"] == pytest.approx(chance["map"])  # one relevant each: AP is RR
    assert math.isnan(random_ranking_metrics(np.zeros(3, bool), ["a", "a", "b"])["map"])
    assert expected_random_ap(8, 1) == pytest.approx(sum(1 / k for k in range(1, 9)) / 8)  # 0.3397: 1 in 8


# ----- the nothing-to-distil warning -----


def answer_selection(tp: int, fp: int, fn: int, questions: int = 125):
    """`questions` questions of 8 candidates, the first relevant (1 in 8, like search-query answer selection); the
    teacher gives the relevant candidate of `tp` questions p = .6, of the next `fn` p = .45 (missed, but still ranked
    first: the others get at most .40), and `fp` irrelevant candidates (of other questions) p = .55."""
    labels, p, groups = [], [], []
    for q in range(questions):
        for c in range(8):
            groups.append(f"q{q}")
            labels.append(0 if c == 0 else 1)
            if c == 0:
                p.append(0.6 if q < tp else 0.45 if q < tp + fn else 0.3)
            else:
                p.append(0.55 if c == 1 and tp + fn - fp <= q < tp + fn else 0.05 * c)
    return logits_for(p), np.array(labels), groups


def warnings_for(recipe, teacher_logits: list[np.ndarray], labels: np.ndarray, groups: list | None):
    """What the pipeline warns, from these teachers' logits on one split (as `main` assembles its inputs)."""
    names = [f"teacher_{i}" for i in range(len(teacher_logits))]
    probs = {"test": {n: recipe.softmax(lg) for n, lg in zip(names, teacher_logits)}}
    rankings = None
    if groups is not None:
        rankings = {"test": {n: recipe.ranking_scores(lg, labels, groups, LABELS, 0, ["q", "s"], "qid")
                             for n, lg in zip(names, teacher_logits)}}
        rankings["test"]["teacher_ensemble"] = recipe.ranking_scores(
            recipe.ensemble_log_probs(teacher_logits), labels, groups, LABELS, 0, ["q", "s"], "qid")
        rankings["test"]["random_ranking"] = random_ranking_metrics(labels == 0, groups)
    metric, scores, chance = recipe.main_metric(probs, {"test": labels}, len(names), rankings)
    return metric, scores, chance, recipe.nothing_to_distil_warnings(metric, scores, chance, len(names))


def test_no_warning_for_teachers_that_rank_well_on_imbalanced_data(recipe):
    """88.7 % accuracy against 87.5 % for the majority class (the old rule warned: within 2 points), but the
    teachers rank the relevant candidate first in almost every question and their MCC is far above 0."""
    logits, labels, groups = answer_selection(tp=26, fp=14, fn=99)
    accuracy = recipe.accuracy(logits, labels)
    majority = float(np.mean(labels == 1))
    assert accuracy == pytest.approx(0.887) and majority == pytest.approx(0.875)
    assert accuracy <= majority + 0.02  # what the old rule compared: it warned here
    metric, scores, chance, warnings = warnings_for(recipe, [logits, logits], labels, groups)
    assert metric == "MAP" and warnings == []
    assert chance["test"] == pytest.approx(expected_random_ap(8, 1))  # 0.340
    assert scores["test"]["teacher_0"] > 0.9  # measured: 0.943 (14 questions lose their answer to rank 2)
    metric, scores, chance, warnings = warnings_for(recipe, [logits, logits], labels, None)
    assert metric == "MCC" and warnings == [] and chance["test"] == 0.0
    # by hand: (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), TN = 875 - 14
    tp, fp, fn, tn = 26, 14, 99, 861
    assert scores["test"]["teacher_0"] == pytest.approx(
        (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))  # 0.324


def test_warning_when_the_teachers_are_at_chance_names_the_metric(recipe):
    """Teachers that say "irrelevant" for every row (MCC 0) and put the relevant candidate of question q at rank
    q mod 8 + 1 (the MAP of a random ranking, exactly: 120 questions, each rank 15 times) must warn."""
    questions = 120
    labels, p, groups = [], [], []
    for q in range(questions):
        for c in range(8):
            groups.append(f"q{q}")
            labels.append(0 if c == q % 8 else 1)
            p.append(0.4 - 0.01 * c)
    logits = logits_for(p)
    assert recipe.accuracy(logits, np.array(labels)) == 0.875
    metric, scores, chance, warnings = warnings_for(recipe, [logits], np.array(labels), groups)
    assert scores["test"]["teacher_0"] == pytest.approx(chance["test"])  # 0.340 both
    assert len(warnings) == 1
    assert "the best teacher's MAP 34.0 and the ensemble's 34.0 are at most 5.0 above the MAP of a random ranking, " \
        "34.0 (" in warnings[0]
    metric, scores, chance, warnings = warnings_for(recipe, [logits], np.array(labels), None)
    assert scores["test"]["teacher_0"] == 0.0 and len(warnings) == 1
    assert "the best teacher's MCC 0.00 and the ensemble's 0.00 are at most 0.05 above chance, 0.00 (" in warnings[0]
    # just above the margin on MAP: no warning
    assert recipe.nothing_to_distil_warnings("MAP", {"test": {"teacher_0": 0.40, "teacher_ensemble": 0.39}},
                                             {"test": 0.34}, 1) == []
    assert recipe.nothing_to_distil_warnings("MAP", {"test": {"teacher_0": 0.38, "teacher_ensemble": 0.39}},
                                             {"test": 0.34}, 1) != []


# ----- the pipeline's data checks and end to end -----


def write_tsv(path, header: list[str], rows: list[list[str]]) -> None:
    """Plain TSV as the pipeline reads it: one header, no quoting."""
    with open(path, "w") as f:
        f.write("".join("\t".join(row) + "\n" for row in [header, *rows]))


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def qnli_rows(split: str) -> list[dict]:
    return read_rows(os.path.join(REPO, "data", "qnli", f"{split}.tsv"))


def ranking_data(folder, questions: int = 6, group_in_test: bool = True) -> str:
    """train/unlabeled from the QNLI slices, and validation/test holding the candidates of `questions` questions
    with several candidates each, a `qid` column naming the question."""
    os.makedirs(folder, exist_ok=True)
    train = qnli_rows("train")[:32]
    write_tsv(folder / "train.tsv", ["question", "sentence", "label"],
              [[r["question"], r["sentence"], r["label"]] for r in train])
    write_tsv(folder / "unlabeled.tsv", ["question", "sentence"],
              [[r["question"], r["sentence"]] for r in qnli_rows("unlabeled")[:16]])
    for split in ("validation", "test"):
        rows = qnli_rows(split)
        by_question: dict[str, list[dict]] = {}
        for r in rows:
            by_question.setdefault(r["question"], []).append(r)
        chosen = [q for q, rs in by_question.items() if len(rs) >= 2][:questions]
        header = ["qid", "question", "sentence", "label"] if group_in_test or split == "validation" else \
            ["question", "sentence", "label"]
        out = []
        for i, q in enumerate(chosen):
            for r in by_question[q]:
                out.append(([f"Q{i}"] if len(header) == 4 else []) + [r["question"], r["sentence"], r["label"]])
        write_tsv(folder / f"{split}.tsv", header, out)
    return str(folder)


def test_missing_group_column_and_bad_labels_are_clear_errors(recipe, tmp_path):
    data = ranking_data(tmp_path / "data", group_in_test=False)
    with pytest.raises(ValueError, match=r"test\.tsv has columns .*missing: \['qid'\]; 'qid' is the group_column"):
        recipe.main(["--data_dir", data, "--group_column", "qid", "--backbone", "unused",
                     "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="positive_label 'yes' is not a label of train"):
        recipe.relevant_label(LABELS, "yes", "qid")
    with pytest.raises(ValueError, match="needs two labels"):
        recipe.relevant_label(["a", "b", "c"], None, "qid")
    with pytest.raises(ValueError, match="Pass --positive_label"):
        recipe.relevant_label(["good", "bad"], None, "qid")
    assert recipe.relevant_label(["0", "1"], None, "qid") == 1 and recipe.relevant_label(LABELS, None, "qid") == 0
    with pytest.raises(ValueError, match="give group_column too"):
        recipe.parse_args(["--positive_label", "entailment"])
    with pytest.raises(ValueError, match="group_column and label_column are both 'label'"):
        recipe.parse_args(["--group_column", "label"])
    # a text column may be the group column too (QNLI's rows of one question share its text): read once
    rows = recipe.read_tsv(os.path.join(data, "validation.tsv"), ["question", "sentence", "label", "question"], None)
    assert rows.column_names == ["question", "sentence", "label"]


@pytest.fixture
def tiny_backbone(tmp_path, tokenizer):
    config = tiny_config("bert")
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    path = tmp_path / "backbone"
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_pipeline_reports_map_and_mrr_per_model(recipe, tmp_path, tiny_backbone):
    """Two tiny teachers, a few dozen rows: results.json, results.md and the card carry MAP and MRR for every
    model but the majority class, beside the random ranking's; the student's is what its own logits score."""
    data = ranking_data(tmp_path / "data")
    out = tmp_path / "out"
    config = {"backbone": tiny_backbone, "data_dir": data, "output_dir": str(out), "group_column": "qid",
              "teacher_seeds": [1, 2], "teacher_learning_rates": [1e-4, 2e-4], "teacher_epochs": 1,
              "stage1_epochs": 1, "stage2_epochs": 1, "student_layers": [0], "batch_size": 8, "speed_repeats": 1,
              "logging_steps": 2, "warmup_steps": 0}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    recipe.main([str(tmp_path / "config.json")])
    results = json.loads((out / "results.json").read_text())

    models = {"teacher_0", "teacher_1", "teacher_ensemble", "tmkd_student", "tmkd_stage1_only", "labels_only_student"}
    assert set(results["accuracy"]["test"]) == models | {"majority_class"}
    task = results["task"]
    assert task["group_column"] == "qid" and task["positive_label"] == "entailment"
    for split in ("validation", "test"):
        rows = read_rows(os.path.join(data, f"{split}.tsv"))
        relevant = np.array([r["label"] == "entailment" for r in rows])
        groups = [r["qid"] for r in rows]
        assert task["questions"][split] == {"questions": 6, "with_relevant": len(set(np.array(groups)[relevant]))}
        for metric in ("map", "mrr"):
            assert set(results[metric][split]) == models | {"random_ranking"}  # no majority_class: it ranks nothing
            assert all(0.0 < v <= 1.0 for v in results[metric][split].values())
            assert results[metric][split]["random_ranking"] == pytest.approx(
                random_ranking_metrics(relevant, groups)[metric], abs=1e-4)

    # the student's MAP and MRR are what its own logits score, by a plain loop here
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    student = AutoModelForSequenceClassification.from_pretrained(results["paths"]["student"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(results["paths"]["student"])
    rows = read_rows(os.path.join(data, "test.tsv"))
    with torch.no_grad():
        enc = tokenizer([r["question"] for r in rows], [r["sentence"] for r in rows], padding=True,
                        return_tensors="pt")
        p_relevant = student(**enc).logits.softmax(-1)[:, 0].numpy()
    aps, rrs = [], []
    for qid in dict.fromkeys(r["qid"] for r in rows):
        ranked = sorted((-p_relevant[i], i) for i, r in enumerate(rows) if r["qid"] == qid)
        hits = [rank for rank, (_, i) in enumerate(ranked, 1) if rows[i]["label"] == "entailment"]
        if hits:
            aps.append(np.mean([k / rank for k, rank in enumerate(hits, 1)]))
            rrs.append(1 / hits[0])
    assert results["map"]["test"]["tmkd_student"] == pytest.approx(np.mean(aps), abs=1e-4)
    assert results["mrr"]["test"]["tmkd_student"] == pytest.approx(np.mean(rrs), abs=1e-4)

    markdown = (out / "results.md").read_text()
    assert "| model | what | validation acc | test acc | validation MAP | test MAP | validation MRR | test MRR |" \
        in markdown
    assert "| majority_class | " in markdown and "| random_ranking | " in markdown
    majority_row = next(line for line in markdown.splitlines() if line.startswith("| majority_class |"))
    assert majority_row.endswith("| – | – | – | – |")
    assert "ranked by the probability of 'entailment'" in markdown
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "student" / "README.md")
    reported = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for split in ("validation", "test"):
        for metric in ("accuracy", "map", "mrr"):
            assert reported[(split, metric)] == results[metric][split]["tmkd_student"]
    assert "test MAP" in card.text and "test MRR" in card.text and "| random_ranking |" in card.text
