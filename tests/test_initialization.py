"""`student_from_teacher_layers`: the DistilBERT-style initialisation of a shallower student."""

from __future__ import annotations

import copy

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


# ----- families whose layers carry settings of their own (tests/test_families.py runs every family end to end) -----

LONG_PAIR = ("what is the largest city of the north and who built it",
             "the largest city is the capital and it was built by a king in the first year of the war")  # fmt: skip


def long_batch(tokenizer):
    """One pair of about 35 tokens: longer than the tiny ModernBERT's sliding window (8) and Longformer's (4, 8)."""
    return tokenizer([LONG_PAIR[0]], [LONG_PAIR[1]], return_tensors="pt")


def teacher_of(family: str, num_layers: int, **overrides):
    from test_families import family_config

    torch.manual_seed(0)
    config = family_config(family, num_layers=num_layers, **overrides)
    return AutoModelForSequenceClassification.from_config(config).eval()


def test_modernbert_layer_types_follow_the_chosen_layers(tokenizer):
    """Layers 0, 3, 6 of a ModernBERT with global attention every third layer are all global: so are the student's
    (the teacher's list, cut to the student's length, would make its layers 1 and 2 sliding-window ones)."""
    from test_families import own_layers

    teacher = teacher_of("modernbert", 7)
    assert teacher.config.layer_types[:3] == ["full_attention", "sliding_attention", "sliding_attention"]
    student = student_from_teacher_layers(teacher, layers=[0, 3, 6]).eval()
    assert student.config.layer_types == ["full_attention"] * 3
    batch = long_batch(tokenizer)
    assert batch["input_ids"].shape[1] > teacher.config.local_attention
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, own_layers(teacher, [0, 3, 6])(**batch).logits)


def test_modernbert_first_layer_is_built_differently_so_it_stays_first():
    """ModernBERT's layer 0 has no attention norm (its embeddings are normed): another layer cannot take its place
    (its norm's weights would be dropped), nor can layer 0 move. Refused, naming the layers that work."""
    teacher = teacher_of("modernbert", 4)
    for layers in ([1], [2, 3], [3, 0]):
        with pytest.raises(ValueError, match=r"builds a layer by its position.*attn_norm.*layers=\[0"):
            student_from_teacher_layers(teacher, layers=layers)


def test_longformer_attention_windows_follow_the_chosen_layers(tokenizer):
    from test_families import own_layers

    teacher = teacher_of("longformer", 4)
    assert teacher.config.attention_window == [4, 8, 4, 8]
    student = student_from_teacher_layers(teacher, layers=[3, 0]).eval()
    assert student.config.attention_window == [8, 4]
    batch = long_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, own_layers(teacher, [3, 0])(**batch).logits)


def test_per_layer_fields_are_the_lists_as_long_as_the_layer_stack():
    from tmkd_hf.initialization import per_layer_fields

    assert per_layer_fields(teacher_of("modernbert", 4).config) == {
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    }
    assert per_layer_fields(teacher_of("longformer", 4).config) == {"attention_window": [4, 8, 4, 8]}
    deberta = teacher_of("deberta-v2", 2)  # two relative-attention kinds, two layers: not one kind per layer
    assert deberta.config.pos_att_type == ["p2c", "c2p"] and per_layer_fields(deberta.config) == {}
    student = student_from_teacher_layers(deberta, layers=[1])
    assert student.config.pos_att_type == ["p2c", "c2p"]


def test_albert_student_repeats_the_shared_layer_fewer_times(tokenizer):
    """ALBERT applies one shared layer num_hidden_layers times: a student of 2 layers applies it twice."""
    teacher = teacher_of("albert", 4)
    student = student_from_teacher_layers(teacher, layers=[0, 3]).eval()
    assert student.config.num_hidden_layers == 2
    assert all(torch.equal(value, teacher.state_dict()[key]) for key, value in student.state_dict().items())
    shorter = copy.deepcopy(teacher)
    shorter.config.num_hidden_layers = 2
    batch = long_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, shorter(**batch).logits)
        assert not torch.allclose(student(**batch).logits, teacher(**batch).logits)  # the depth did change
    with pytest.raises(ValueError, match=r"shares its layer weights in 2 groups"):
        student_from_teacher_layers(teacher_of("albert", 4, num_hidden_groups=2), layers=[0, 1])


def test_funnel_layers_cannot_be_picked_one_by_one():
    with pytest.raises(ValueError, match=r"pools the sequence between its blocks.*MultiHeadStudent.from_pretrained"):
        student_from_teacher_layers(teacher_of("funnel", 4), layers=[0, 1])
