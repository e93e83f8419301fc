"""benchmarks/peer_crossencoder.py: the sentence-transformers CrossEncoderTrainer peer baseline, on a tiny random BERT
(4 layers, hidden 32) and the keyword task, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KEYWORDS, keyword_dataset
from transformers import BertConfig, BertModel

pytest.importorskip("sentence_transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peer_crossencoder as peer  # noqa: E402

COLUMNS = ["question", "sentence"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, tokenizer):
    """A 4-layer tiny BERT encoder with the tiny tokenizer, as a backbone folder."""
    path = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def labelled(n: int, seed: int):
    """Keyword rows with 3 teachers' logits: the positive class (id 0) when the sentence names a keyword (margin about
    +3 per teacher, else about -1: off centre, so that the scores' mean has somewhere to go); golden label 0
    (positive) for keyword rows, 1 otherwise."""
    rows = keyword_dataset(n, seed=seed)
    rng = np.random.default_rng(seed)
    has = np.array([any(k in s.split() for k in KEYWORDS) for s in rows["sentence"]])
    margin = np.where(has, 3.0, -1.0)[:, None] + rng.normal(0, 0.3, (n, 3))
    logits = np.stack([margin / 2, -margin / 2], axis=-1).astype(np.float32)  # [n, 3 teachers, 2]
    rows = rows.map(lambda b, idx: {"label": [0 if has[i] else 1 for i in idx]}, with_indices=True, batched=True)
    return rows.add_column("teacher_logits", logits.tolist())


def test_margin_targets_by_hand():
    logits = np.array([[[2.0, 1.0], [0.0, 3.0], [1.0, 1.0]],  # margins for positive 0: 1, -3, 0 -> mean -2/3
                       [[0.5, -0.5], [4.0, 0.0], [-1.0, 1.0]]])  # 1, 4, -2 -> mean 1
    np.testing.assert_allclose(peer.margin_targets(logits, positive=0), [-2 / 3, 1.0])
    np.testing.assert_allclose(peer.margin_targets(logits, positive=1), [2 / 3, -1.0])
    np.testing.assert_allclose(peer.margin_targets(logits, positive=0, teachers=[0]), [1.0, 1.0])
    np.testing.assert_allclose(peer.margin_targets(logits, positive=0, teachers=[0, 1]), [-1.0, 2.5])
    from datasets import Dataset

    dataset = Dataset.from_dict({"question": ["a", "b"], "teacher_logits": logits.tolist()})
    np.testing.assert_allclose(peer.margin_targets(dataset, positive=0), [-2 / 3, 1.0], rtol=1e-6)


def test_margin_targets_refuse_bad_input():
    from datasets import Dataset

    with pytest.raises(ValueError, match="two-label"):
        peer.margin_targets(np.zeros((2, 3, 3)), positive=0)
    with pytest.raises(ValueError, match="indices must lie"):
        peer.margin_targets(np.zeros((2, 3, 2)), positive=0, teachers=[3])
    with pytest.raises(ValueError, match="NaN"):
        peer.margin_targets(np.full((2, 3, 2), np.nan), positive=0)
    with pytest.raises(ValueError, match="no 'teacher_logits' column"):
        peer.margin_targets(Dataset.from_dict({"question": ["a"]}), positive=0)


def test_positive_index_from_the_manifest():
    from datasets import Dataset

    from tmkd_hf.soft_label_cache import MANIFEST_FORMAT, attach_manifest

    dataset = Dataset.from_dict({"question": ["a"], "teacher_logits": [[[0.0, 1.0]]]})
    with pytest.raises(ValueError, match="no soft-label manifest"):
        peer.positive_index(dataset, "entailment")
    attach_manifest(dataset, {"format": MANIFEST_FORMAT, "label_names": ["not_entailment", "entailment"]})
    assert peer.positive_index(dataset, "entailment") == 1
    assert peer.positive_index(dataset, 0) == 0
    with pytest.raises(ValueError, match="not one of"):
        peer.positive_index(dataset, "neutral")


def test_both_kinds_hold_the_chosen_layers_and_their_readout(backbone, tmp_path):
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    folder = peer.save_truncated_backbone(backbone, [0, 2, 3], tmp_path / "truncated")
    teacher = BertModel.from_pretrained(backbone)
    cls = peer.build_peer_student(folder, "cls", max_length=32, seed=1)
    mean = peer.build_peer_student(folder, "mean", max_length=32, seed=1)

    assert [type(m) for m in cls] == [Transformer]
    assert cls[0].transformer_task == "sequence-classification" and cls.num_labels == 1
    assert type(cls.model).__name__ == "BertForSequenceClassification"  # [CLS] -> pooler -> linear
    assert [type(m) for m in mean] == [Transformer, Pooling, Dense]
    assert mean[0].transformer_task == "feature-extraction" and mean[1].pooling_mode == "mean"
    assert (mean[2].in_features, mean[2].out_features, mean[2].module_output_name) == (32, 1, "scores")
    assert isinstance(mean[2].activation_function, torch.nn.Identity) and mean.num_labels == 1

    for model in (cls, mean):
        encoder = model[0].model.base_model if model is cls else model[0].model
        assert encoder.config.num_hidden_layers == 3
        for j, i in enumerate([0, 2, 3]):  # student layer j is teacher layer i, weight for weight
            got, want = encoder.encoder.layer[j].state_dict(), teacher.encoder.layer[i].state_dict()
            assert all(torch.equal(got[k], want[k]) for k in want)
        assert torch.equal(encoder.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    assert cls.max_length == 32 and mean.max_length == 32
    with pytest.raises(ValueError, match="kind must be one of"):
        peer.build_peer_student(folder, "max", max_length=32, seed=1)


def test_score_metrics_by_hand():
    scores = np.array([1.0, -0.5, 2.0, -1.0, 0.3])
    labels = [0, 0, 1, 1, 0]  # positive id 0: predicted 0, 1, 0, 1, 0 -> right, wrong, wrong, right, right
    groups = ["q1", "q1", "q1", "q2", "q2"]
    m = peer.score_metrics(scores, labels, positive=0, groups=groups)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # q1 ranked by score: row 2 (not), row 0 (rel), row 1 (rel): AP = (1/2 + 2/3) / 2, RR = 1/2; q2: row 4 (rel) first
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["questions_ranked"] == 2 and m["questions_with_2plus_candidates"] == 2
    flipped = peer.score_metrics(scores, [1 - v for v in labels], positive=1)  # the same rows are positive
    assert flipped == {"accuracy": pytest.approx(3 / 5)}
    with pytest.raises(ValueError, match="integer ids"):
        peer.score_metrics(scores, ["a"] * 5, positive=0)


@pytest.mark.parametrize("kind", peer.KINDS)
def test_two_stage_run_trains_writes_its_json_and_is_reused(backbone, tmp_path, monkeypatch, kind):
    pool, train = labelled(32, seed=1).remove_columns("label"), labelled(32, seed=2)
    eval_sets = {"validation": labelled(16, seed=3), "test": labelled(16, seed=4)}
    config = peer.PeerConfig(kind=kind, layers=(0, 1, 2), learning_rate=1e-2, stage1_epochs=2, stage2_epochs=3,
                             batch_size=8, warmup_steps=0, max_length=32, seed=7, positive=0, threads=1)
    seen = {}
    real_build = peer.build_peer_student

    def spy(*args, **kwargs):
        model = real_build(*args, **kwargs)
        seen["model"], seen["before"] = model, {k: v.clone() for k, v in model.state_dict().items()}
        seen["scores_before"] = peer.predict_scores(model, train, COLUMNS)
        return model

    monkeypatch.setattr(peer, "build_peer_student", spy)
    result = peer.run_peer(backbone, pool=pool, train=train, eval_sets=eval_sets, text_columns=COLUMNS,
                           config=config, out_dir=tmp_path, group_column="question", log=lambda m: None)

    targets = peer.margin_targets(train, positive=0)
    after = peer.predict_scores(seen["model"], train, COLUMNS)
    mse_before, mse_after = np.mean((seen["scores_before"] - targets) ** 2), np.mean((after - targets) ** 2)
    # the tiny random encoder's [CLS] state barely varies between rows (as MiniLM's does): in 20 steps the [CLS]
    # student learns little beyond the targets' mean, the mean-pooled one more (measured: 0.90x and 0.72x)
    assert mse_after < (0.95 if kind == "cls" else 0.8) * mse_before, (mse_before, mse_after)
    assert abs(after.mean() - targets.mean()) < abs(seen["scores_before"].mean() - targets.mean())
    assert any(not torch.equal(v, seen["model"].state_dict()[k]) for k, v in seen["before"].items())
    assert result["stages"]["stage1"]["rows"] == 32 and result["stages"]["stage1"]["steps"] == 8  # 2 epochs x 4
    assert result["stages"]["stage2"]["steps"] == 12
    assert set(result["seconds"]) == {"stage1", "stage2", "evaluation", "total"}
    assert set(result["metrics"]) == {"validation", "test"}
    assert {"accuracy", "map", "mrr"} <= set(result["metrics"]["test"])
    path = tmp_path / "runs" / f"peer_{kind}__lr0.01__seed7.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert not (tmp_path / "work" / path.stem).exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(peer, "train_peer", no_training)
    again = peer.run_peer(backbone, pool=pool, train=train, eval_sets=eval_sets, text_columns=COLUMNS,
                          config=config, out_dir=tmp_path, group_column="question", log=lambda m: None)
    assert again == json.loads(path.read_text())
    other = peer.PeerConfig(**{**config.to_dict(), "teachers": (0,)})  # same name, other settings: refused
    with pytest.raises(ValueError, match="config.teachers"):
        peer.run_peer(backbone, pool=pool, train=train, eval_sets=eval_sets, text_columns=COLUMNS, config=other,
                      out_dir=tmp_path, group_column="question", log=lambda m: None)


def test_tune_learning_rate_picks_the_best_on_a_fake_scorer():
    accuracy = {5e-5: 0.61, 1e-4: 0.70, 2e-4: 0.83, 4e-4: 0.79}
    chosen = peer.tune_learning_rate(lambda lr, scale: accuracy[lr])
    assert chosen["learning_rate"] == 2e-4 and chosen["score"] == 0.83 and chosen["target_scale"] == 1.0
    assert [t["learning_rate"] for t in chosen["trials"]] == list(peer.LR_GRID)
    tie = peer.tune_learning_rate(lambda lr, scale: 0.5)  # ties: the first grid point
    assert tie["learning_rate"] == peer.LR_GRID[0]
    crossed = peer.tune_learning_rate(lambda lr, scale: accuracy[lr] + (0.1 if scale == 0.5 else 0), [1e-4, 2e-4],
                                      [1.0, 0.5])
    assert (crossed["learning_rate"], crossed["target_scale"]) == (2e-4, 0.5) and len(crossed["trials"]) == 4


def test_tune_peer_chooses_on_validation_only(tmp_path, monkeypatch):
    validation = {5e-5: 0.6, 1e-4: 0.8, 2e-4: 0.7, 4e-4: 0.5}
    test = {5e-5: 0.9, 1e-4: 0.1, 2e-4: 0.1, 4e-4: 0.1}  # never read to choose
    calls = []

    def fake_run(backbone, *, config, **kwargs):
        calls.append((config.learning_rate, config.seed))
        lr = config.learning_rate
        return {"row": peer.run_name(config),
                "metrics": {"validation": {"accuracy": validation[lr]}, "test": {"accuracy": test[lr]}}}

    monkeypatch.setattr(peer, "run_peer", fake_run)
    tuned = peer.tune_peer("backbone", pool=None, train=None, eval_sets={"validation": None, "test": None},
                           text_columns=COLUMNS, config=peer.PeerConfig(kind="cls", seed=3), out_dir=tmp_path,
                           log=lambda m: None)
    assert tuned["learning_rate"] == 1e-4 and calls == [(lr, 3) for lr in peer.LR_GRID]
    saved = json.loads((tmp_path / "tuning_cls.json").read_text())
    assert saved["learning_rate"] == 1e-4 and saved["trials"][1]["run"] == "peer_cls__lr0.0001__seed3"
    with pytest.raises(ValueError, match="validation"):
        peer.tune_peer("b", pool=None, train=None, eval_sets={"test": None}, text_columns=COLUMNS,
                       config=peer.PeerConfig(), out_dir=tmp_path)
