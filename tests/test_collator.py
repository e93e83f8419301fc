"""Unit tests for DataCollatorWithTeacherLogits: padding like DataCollatorWithPadding plus stacked teacher logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Array2D, Dataset, Features, Sequence, Value
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from tmkd_hf import DataCollatorWithTeacherLogits
from tmkd_hf.collator import check_finite_teacher_logits, stack_teacher_logits

QUESTIONS = ["what is the capital", "who wrote the book", "where", "when was the oldest team found in the north"]
SENTENCES = ["the capital city", "a king wrote it", "in the south of the country by the river", "first year"]
LOGITS = [  # [4 examples, 3 teachers, 2 labels]
    [[0.25, -1.5], [2.0, 0.125], [-0.75, 3.5]],
    [[1.0, 0.0], [0.5, 0.5], [-2.0, 2.0]],
    [[3.25, -3.25], [0.0, 1.0], [1.5, -0.5]],
    [[-0.5, 0.75], [1.25, 1.0], [0.0, 0.0]],
]


def make_features(tokenizer, n=4, labels=True, teacher_logits=True, convert=lambda x: x):
    features = []
    for i in range(n):
        f = dict(tokenizer(QUESTIONS[i], SENTENCES[i]))
        if labels:
            f["label"] = i % 2
        if teacher_logits:
            f["teacher_logits"] = convert(LOGITS[i])
        features.append(f)
    return features


def strip_logits(features):
    return [{k: v for k, v in f.items() if k != "teacher_logits"} for f in features]


def assert_same_padding(batch, reference):
    expected_keys = set(reference)
    assert set(batch) - {"teacher_logits"} == expected_keys
    for key in expected_keys:
        assert torch.equal(torch.as_tensor(batch[key]), torch.as_tensor(reference[key])), key


# ----- padding and stacking -----


def test_pads_like_data_collator_with_padding_and_stacks_logits(tokenizer):
    features = make_features(tokenizer)
    lengths = {len(f["input_ids"]) for f in features}
    assert len(lengths) > 1  # the test needs ragged inputs
    batch = DataCollatorWithTeacherLogits(tokenizer)(features)
    reference = DataCollatorWithPadding(tokenizer)(strip_logits(features))
    assert_same_padding(batch, reference)
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == [len(f["input_ids"]) for f in features]
    pad_rows = [i for i, f in enumerate(features) if len(f["input_ids"]) < max(lengths)]
    assert pad_rows
    for i in pad_rows:
        assert batch["input_ids"][i, -1].item() == tokenizer.pad_token_id
        assert batch["attention_mask"][i, -1].item() == 0
    tl = batch["teacher_logits"]
    assert isinstance(tl, torch.Tensor)
    assert tl.dtype == torch.float32
    assert tl.shape == (4, 3, 2)
    assert tl.tolist() == LOGITS  # values chosen exactly representable in float32


def test_labels_renamed_and_kept(tokenizer):
    batch = DataCollatorWithTeacherLogits(tokenizer)(make_features(tokenizer))
    assert "label" not in batch
    assert batch["labels"].tolist() == [0, 1, 0, 1]
    assert batch["labels"].dtype == torch.long


def test_without_labels(tokenizer):
    features = make_features(tokenizer, labels=False)
    batch = DataCollatorWithTeacherLogits(tokenizer)(features)
    assert "labels" not in batch and "label" not in batch
    assert batch["teacher_logits"].tolist() == LOGITS
    assert_same_padding(batch, DataCollatorWithPadding(tokenizer)(strip_logits(features)))


def test_without_teacher_logits_has_no_key(tokenizer):
    features = make_features(tokenizer, teacher_logits=False)
    batch = DataCollatorWithTeacherLogits(tokenizer)(features)
    assert "teacher_logits" not in batch
    assert_same_padding(batch, DataCollatorWithPadding(tokenizer)(features))


def test_all_teacher_logits_none_counts_as_absent(tokenizer):
    features = make_features(tokenizer)
    for f in features:
        f["teacher_logits"] = None
    batch = DataCollatorWithTeacherLogits(tokenizer)(features)
    assert "teacher_logits" not in batch
    assert batch["labels"].tolist() == [0, 1, 0, 1]


def test_does_not_mutate_features(tokenizer):
    features = make_features(tokenizer)
    DataCollatorWithTeacherLogits(tokenizer)(features)
    assert all("teacher_logits" in f and "label" in f for f in features)
    assert features[0]["teacher_logits"] == LOGITS[0]


@pytest.mark.parametrize(
    "convert",
    [
        lambda x: x,
        lambda x: np.asarray(x, dtype=np.float64),
        lambda x: np.asarray(x, dtype=np.float16),
        lambda x: torch.tensor(x, dtype=torch.float64),
        lambda x: torch.tensor(x, dtype=torch.bfloat16),
        lambda x: [tuple(r) for r in x],
    ],
    ids=["list", "np64", "np16", "torch64", "torch_bf16", "tuples"],
)
def test_accepts_lists_numpy_and_tensors(tokenizer, convert):
    batch = DataCollatorWithTeacherLogits(tokenizer)(make_features(tokenizer, convert=convert))
    assert batch["teacher_logits"].dtype == torch.float32
    assert batch["teacher_logits"].shape == (4, 3, 2)
    torch.testing.assert_close(batch["teacher_logits"], torch.tensor(LOGITS))


def test_mixed_row_types_in_one_batch(tokenizer):
    features = make_features(tokenizer)
    features[1]["teacher_logits"] = np.asarray(LOGITS[1], dtype=np.float32)
    features[2]["teacher_logits"] = torch.tensor(LOGITS[2])
    batch = DataCollatorWithTeacherLogits(tokenizer)(features)
    assert batch["teacher_logits"].tolist() == LOGITS


def test_one_dimensional_row_is_one_teacher(tokenizer):
    features = make_features(tokenizer, n=2)
    features[0]["teacher_logits"] = [0.5, -0.25, 1.0]
    features[1]["teacher_logits"] = np.array([2.0, 0.0, -1.0])
    batch = DataCollatorWithTeacherLogits(tokenizer)(features)
    assert batch["teacher_logits"].shape == (2, 1, 3)
    assert batch["teacher_logits"].tolist() == [[[0.5, -0.25, 1.0]], [[2.0, 0.0, -1.0]]]


def test_single_example_batch(tokenizer):
    batch = DataCollatorWithTeacherLogits(tokenizer)(make_features(tokenizer, n=1))
    assert batch["teacher_logits"].shape == (1, 3, 2)
    assert batch["input_ids"].shape[0] == 1


def test_padding_options_pass_through(tokenizer):
    features = make_features(tokenizer)
    collator = DataCollatorWithTeacherLogits(tokenizer, padding="max_length", max_length=32)
    batch = collator(features)
    assert batch["input_ids"].shape == (4, 32)
    collator = DataCollatorWithTeacherLogits(tokenizer, pad_to_multiple_of=8)
    batch = collator(features)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert_same_padding(batch, DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)(strip_logits(features)))


def test_numpy_return_tensors(tokenizer):
    features = make_features(tokenizer)
    batch = DataCollatorWithTeacherLogits(tokenizer, return_tensors="np")(features)
    assert isinstance(batch["teacher_logits"], np.ndarray)
    assert batch["teacher_logits"].dtype == np.float32
    np.testing.assert_array_equal(batch["teacher_logits"], np.asarray(LOGITS, dtype=np.float32))
    assert isinstance(batch["input_ids"], np.ndarray)


# ----- errors -----


def test_error_some_rows_missing_teacher_logits(tokenizer):
    features = make_features(tokenizer)
    del features[1]["teacher_logits"]
    features[3]["teacher_logits"] = None
    with pytest.raises(
        ValueError, match=r"Some examples in the batch have no teacher_logits \(batch positions \[1, 3\]\)"
    ):
        DataCollatorWithTeacherLogits(tokenizer)(features)


def test_error_rows_of_different_shapes(tokenizer):
    features = make_features(tokenizer)
    features[2]["teacher_logits"] = LOGITS[2][:2]  # one teacher fewer
    with pytest.raises(ValueError, match=r"different shapes in one batch: \[\(2, 2\), \(3, 2\)\]"):
        DataCollatorWithTeacherLogits(tokenizer)(features)


def test_error_rows_with_different_label_counts(tokenizer):
    features = make_features(tokenizer, n=2)
    features[1]["teacher_logits"] = [[0.0, 1.0, 2.0]] * 3
    with pytest.raises(ValueError, match="different shapes"):
        DataCollatorWithTeacherLogits(tokenizer)(features)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_error_non_finite_values_name_batch_position(tokenizer, bad):
    features = make_features(tokenizer)
    features[2]["teacher_logits"] = [[0.0, 1.0], [bad, 0.5], [1.0, 1.0]]
    with pytest.raises(
        ValueError, match=r"NaN or inf.*1 of 4 examples.*batch positions \[2\].*teacher index\(es\) \[1\]"
    ):
        DataCollatorWithTeacherLogits(tokenizer)(features)


def test_error_non_finite_several_rows(tokenizer):
    features = make_features(tokenizer)
    features[0]["teacher_logits"] = np.array([[np.nan, 0.0], [0.0, 0.0], [0.0, 0.0]])
    features[3]["teacher_logits"] = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, float("nan")]])
    with pytest.raises(ValueError, match=r"NaN.*2 of 4 examples.*batch positions \[0, 3\].*\[0, 2\]"):
        DataCollatorWithTeacherLogits(tokenizer)(features)


def test_error_three_dimensional_row(tokenizer):
    features = make_features(tokenizer, n=2)
    features[1]["teacher_logits"] = [LOGITS[1]]
    with pytest.raises(ValueError, match=r"example 1 in the batch has shape \(1, 3, 2\).*\[num_teachers, num_labels\]"):
        DataCollatorWithTeacherLogits(tokenizer)(features)


def test_stack_and_check_helpers_directly():
    stacked = stack_teacher_logits([LOGITS[0], np.asarray(LOGITS[1])])
    assert stacked.shape == (2, 3, 2) and stacked.dtype == torch.float32
    check_finite_teacher_logits(stacked)  # finite: no error
    with pytest.raises(ValueError, match="NaN or inf"):
        check_finite_teacher_logits(torch.tensor([[[0.0, float("nan")]]]))
    with pytest.raises(ValueError, match=r"has shape \(\)"):
        stack_teacher_logits([0.5])


# ----- with datasets + DataLoader -----


def labelled_dataset(tokenizer):
    rows = {
        "question": QUESTIONS,
        "sentence": SENTENCES,
        "label": [0, 1, 1, 0],
        "teacher_logits": LOGITS,
    }
    features = Features(
        {
            "question": Value("string"),
            "sentence": Value("string"),
            "label": Value("int64"),
            "teacher_logits": Array2D(shape=(3, 2), dtype="float32"),
        }
    )
    ds = Dataset.from_dict(rows, features=features)
    ds = ds.map(
        lambda b: tokenizer(b["question"], b["sentence"]), batched=True, remove_columns=["question", "sentence"]
    )
    assert isinstance(ds.features["input_ids"], (Sequence, list))
    return ds


@pytest.mark.parametrize("fmt", [None, "torch", "numpy"])
def test_dataloader_over_dataset_with_array2d_column(tokenizer, fmt):
    ds = labelled_dataset(tokenizer)
    if fmt is not None:
        ds = ds.with_format(fmt)
    loader = DataLoader(ds, batch_size=3, shuffle=False, collate_fn=DataCollatorWithTeacherLogits(tokenizer))
    batches = list(loader)
    assert len(batches) == 2
    assert [b["teacher_logits"].shape for b in batches] == [(3, 3, 2), (1, 3, 2)]
    assert all(b["teacher_logits"].dtype == torch.float32 for b in batches)
    assert torch.cat([b["teacher_logits"] for b in batches]).tolist() == LOGITS
    assert torch.cat([b["labels"] for b in batches]).tolist() == [0, 1, 1, 0]
    plain = [{k: v for k, v in row.items() if k != "teacher_logits"} for row in labelled_dataset(tokenizer)]
    reference = DataCollatorWithPadding(tokenizer)(plain[:3])
    assert_same_padding(batches[0], reference)


def test_ragged_teacher_logits_name_the_column_and_example():
    from tmkd_hf.collator import stack_teacher_logits

    with pytest.raises(ValueError, match=r"teacher_logits of example 1 in the batch is not a \[num_teachers, "
                       r"num_labels\] array of numbers \(inner lengths \[2, 1\]"):
        stack_teacher_logits([[[0.1, 0.2], [0.3, 0.4]], [[0.1, 0.2], [0.3]]])
    with pytest.raises(ValueError, match="example 0 .* array of numbers"):
        stack_teacher_logits([[["a", "b"]]])
