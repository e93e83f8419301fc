"""`student_from_teacher_layers`: the DistilBERT-style initialisation of a shallower student."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModel, AutoModelForSequenceClassification

from tmkd_hf import student_from_teacher_layers


def four_layer_teacher(family: str = "bert", num_labels: int = 2, seed: int = 0):
    config = tiny_config(family, num_labels)
    config.num_hidden_layers = 4  # DistilBERT maps this to n_layers
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def layer_params(model, index: int) -> dict[str, torch.Tensor]:
    base = getattr(model, model.base_model_prefix)
    layer_list = base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer
    return dict(layer_list[index].named_parameters())


def test_copies_embeddings_chosen_layers_pooler_and_head():
    teacher = four_layer_teacher()
    student = student_from_teacher_layers(teacher, layers=[0, 2], num_labels=2)
    assert student.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 2
    for s_idx, t_idx in ((0, 0), (1, 2)):
        t_params, s_params = layer_params(teacher, t_idx), layer_params(student, s_idx)
        assert t_params.keys() == s_params.keys()
        for name, value in t_params.items():
            assert torch.equal(s_params[name], value), (s_idx, t_idx, name)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    outside = [k for k in s_state if ".encoder.layer." not in k]
    assert any(k.startswith("bert.embeddings.") for k in outside) and "bert.pooler.dense.weight" in outside
    for key in outside:
        assert torch.equal(s_state[key], t_state[key]), key
    # The copy is a copy: training the student leaves the teacher alone.
    with torch.no_grad():
        student.bert.encoder.layer[1].output.dense.weight.add_(1.0)
    assert not torch.equal(
        student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[2].output.dense.weight
    )


def test_forward_runs_and_matches_a_teacher_truncated_the_same_way(tokenizer):
    teacher = four_layer_teacher()
    student = student_from_teacher_layers(teacher, layers=[0, 1], num_labels=2).eval()
    batch = tokenizer(["what is the capital city"], ["the capital of the country is a river city"], return_tensors="pt")
    with torch.no_grad():
        logits = student(**batch).logits
        # A teacher whose last two layers are dropped computes exactly what a [0, 1] student computes.
        teacher.bert.encoder.layer = teacher.bert.encoder.layer[:2]
        teacher.config.num_hidden_layers = 2
        expected = teacher(**batch).logits
    assert logits.shape == (1, 2)
    torch.testing.assert_close(logits, expected)


def test_loads_from_a_directory_and_keeps_label_names(tmp_path):
    teacher = four_layer_teacher(seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    id2label = {"0": "entailment", "1": "not_entailment"}  # string keys, as a JSON config gives them
    student = student_from_teacher_layers(
        tmp_path / "teacher",
        layers=(3, 1),
        num_labels=2,
        id2label=id2label,
        label2id={"entailment": 0, "not_entailment": 1},
        hidden_dropout_prob=0.0,
    )
    assert student.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert student.config.label2id == {"entailment": 0, "not_entailment": 1}
    assert student.config.hidden_dropout_prob == 0.0
    for name, value in layer_params(teacher, 3).items():
        assert torch.equal(layer_params(student, 0)[name], value)
    for name, value in layer_params(teacher, 1).items():
        assert torch.equal(layer_params(student, 1)[name], value)
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert reloaded.config.num_hidden_layers == 2


def test_bare_encoder_checkpoint_gets_a_fresh_head(tmp_path):
    """A checkpoint without a classification head (e.g. all-MiniLM-L6-v2): the encoder is copied, the head is new."""
    teacher = four_layer_teacher(seed=2)
    encoder = AutoModel.from_config(teacher.config)
    encoder.load_state_dict(teacher.bert.state_dict())
    encoder.save_pretrained(tmp_path / "encoder")
    student = student_from_teacher_layers(tmp_path / "encoder", layers=[0, 2], num_labels=3)
    assert student.config.num_labels == 3 and student.classifier.out_features == 3
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    assert torch.equal(
        student.bert.encoder.layer[1].attention.self.query.weight, encoder.encoder.layer[2].attention.self.query.weight
    )


def test_different_label_count_keeps_the_fresh_head():
    teacher = four_layer_teacher(num_labels=2)
    torch.manual_seed(5)
    student = student_from_teacher_layers(teacher, layers=[0], num_labels=3)
    assert student.classifier.weight.shape == (3, teacher.config.hidden_size)
    assert student.config.num_hidden_layers == 1


def test_negative_indices_count_from_the_end():
    teacher = four_layer_teacher()
    student = student_from_teacher_layers(teacher, layers=[-1])
    for name, value in layer_params(teacher, 3).items():
        assert torch.equal(layer_params(student, 0)[name], value)


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_bert_family_encoders(family, tokenizer):
    teacher = four_layer_teacher(family)
    student = student_from_teacher_layers(teacher, layers=[1, 3], num_labels=2)
    assert student.config.num_hidden_layers == 2
    for s_idx, t_idx in ((0, 1), (1, 3)):
        for name, value in layer_params(teacher, t_idx).items():
            assert torch.equal(layer_params(student, s_idx)[name], value)
    batch = tokenizer(["who wrote the book"], ["the book was written by a king"], return_tensors="pt")
    batch.pop("token_type_ids")
    assert student(**batch).logits.shape == (1, 2)


@pytest.mark.parametrize(
    "layers, match",
    [
        ([0, 4], r"out of range: the teacher has 4 layers"),
        ([-5], r"out of range"),
        ([], r"layers is empty"),
        ((), r"layers is empty"),
        ([0, 1.5], r"must hold integers"),
    ],
)
def test_bad_layer_indices_are_clear_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        student_from_teacher_layers(four_layer_teacher(), layers=layers)


def test_layers_that_are_not_a_list_are_a_type_error():
    with pytest.raises(TypeError, match="must be a list of teacher layer indices"):
        student_from_teacher_layers(four_layer_teacher(), layers="012")


def test_bad_num_labels_and_inconsistent_id2label():
    teacher = four_layer_teacher()
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        student_from_teacher_layers(teacher, layers=[0], num_labels=0)
    with pytest.raises(ValueError, match="id2label has 3 labels but num_labels=2"):
        student_from_teacher_layers(teacher, layers=[0], num_labels=2, id2label={0: "a", 1: "b", 2: "c"})
