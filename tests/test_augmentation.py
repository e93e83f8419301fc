"""tmkd_hf.augmentation: embedding-neighbour word replacement and question re-pairing for the stage-1 pool."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertModel, BertTokenizerFast

from tmkd_hf.augmentation import augment_pairs, word_neighbours

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "cats", "dog", "dogs", "river", "rivers", "lake",
         "##ing", "a", "is", "1990"]
# hand-placed embeddings: cat ~ cats, dog ~ dogs, river ~ rivers ~ lake; the rest far from everything
PLACES = {"cat": [1, 0, 0, 0], "cats": [0.9, 0.1, 0, 0], "dog": [0, 1, 0, 0], "dogs": [0.1, 0.9, 0, 0],
          "river": [0, 0, 1, 0], "rivers": [0, 0, 0.95, 0.05], "lake": [0, 0, 0.8, 0.2]}


@pytest.fixture
def placed_model(tmp_path):
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True)
    model = BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                                 intermediate_size=8))
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight.normal_(0, 0.01)
        for word, place in PLACES.items():
            weight[VOCAB.index(word)] = torch.tensor(place, dtype=torch.float)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def test_word_neighbours_are_the_nearest_whole_words(placed_model):
    neighbours = word_neighbours(placed_model, k=2)
    assert neighbours["cat"][0] == "cats" and neighbours["dog"][0] == "dogs"
    assert set(neighbours["river"]) == {"rivers", "lake"}
    assert all(word not in options for word, options in neighbours.items())  # never its own neighbour
    # word pieces, special tokens, short words and numbers are not words to replace
    assert not {"##ing", "[CLS]", "[MASK]", "a", "is", "1990"} & set(neighbours)
    with pytest.raises(ValueError, match="k must be"):
        word_neighbours(placed_model, k=0)


NEIGHBOURS = {"cat": ["cats"], "dog": ["dogs"], "river": ["lake"], "where": ["which"]}


def pool(n: int = 6) -> Dataset:
    questions = [f"Where is the river {i}?" for i in range(n)]
    passages = [f"The dog {i} swam; a CAT watched." for i in range(n)]
    return Dataset.from_dict({"idx": list(range(n)), "question": questions, "sentence": passages,
                              "label": ["entailment"] * n})


def test_every_word_with_neighbours_is_replaced_case_and_punctuation_kept():
    out = augment_pairs(pool(2), copies=1, neighbours=NEIGHBOURS, replace_prob=1.0)
    assert out.column_names == ["question", "sentence", "augmented_from", "augmentation"]  # the label is dropped
    assert out[0]["question"] == "Which is the lake 0?"
    assert out[0]["sentence"] == "The dogs 0 swam; a CATS watched."
    assert list(out["augmented_from"]) == [0, 1] and set(out["augmentation"]) == {"words"}


def test_augmentation_is_deterministic_per_seed_and_keeps_the_text_without_changes():
    data = pool(40)
    first = augment_pairs(data, copies=2, neighbours=NEIGHBOURS, replace_prob=0.5, seed=3)
    again = augment_pairs(data, copies=2, neighbours=NEIGHBOURS, replace_prob=0.5, seed=3)
    other = augment_pairs(data, copies=2, neighbours=NEIGHBOURS, replace_prob=0.5, seed=4)
    assert first.to_dict() == again.to_dict()
    assert first.to_dict() != other.to_dict()
    assert len(first) == 80 and list(first["augmented_from"]) == list(range(40)) * 2
    assert first[:40]["question"] != first[40:]["question"]  # the two copies differ
    # about half the replaceable words change (4 per row: where, river, dog, cat)
    changed = sum(a != b for row, src in zip(first, list(data) * 2)
                  for a, b in zip((row["question"] + " " + row["sentence"]).split(),
                                  (src["question"] + " " + src["sentence"]).split()))
    assert 0.35 < changed / (80 * 4) < 0.65
    untouched = augment_pairs(data, copies=1, neighbours=NEIGHBOURS, replace_prob=0.0)
    assert list(untouched["question"]) == list(data["question"]) and set(untouched["augmentation"]) == {"none"}


def test_repairing_picks_another_questions_passage_that_shares_the_most_words():
    data = Dataset.from_dict({
        "question": ["Which river flows through Paris?", "Who painted the Mona Lisa?",
                     "Which river flows through Paris?", "When did the empire fall?"],
        "sentence": ["The Paris river flows through the city.", "The Seine river.", "Leonardo painted it.",
                     "Rome fell in 476."],
    })
    out = augment_pairs(data, copies=1, replace_prob=0.0, repair_prob=1.0, repair_candidates=4)
    assert out[1]["sentence"] == "Leonardo painted it."  # "painted": the passage sharing the most words
    assert set(out["augmentation"]) == {"repair"}
    # rows of the same question are never partners: rows 0 and 2 (one question) get row 1's passage, not each
    # other's, though row 0's passage shares far more words with row 2's question
    assert out[0]["sentence"] == out[2]["sentence"] == "The Seine river."


def test_bad_inputs_are_refused_with_the_reason():
    data = pool(4)
    with pytest.raises(ValueError, match=r"no column\(s\) \['passage'\]"):
        augment_pairs(data, text_columns=("question", "passage"), neighbours=NEIGHBOURS)
    with pytest.raises(ValueError, match="needs `neighbours`"):
        augment_pairs(data)
    with pytest.raises(ValueError, match="copies must be >= 1"):
        augment_pairs(data, copies=0, neighbours=NEIGHBOURS)
    with pytest.raises(ValueError, match=r"repair_prob must be in \[0, 1\]"):
        augment_pairs(data, neighbours=NEIGHBOURS, repair_prob=1.5)
    with pytest.raises(ValueError, match="two text columns"):
        augment_pairs(data, text_columns=("question",), replace_prob=0.0, repair_prob=0.5)
    with pytest.raises(ValueError, match="empty"):
        augment_pairs(data.select([]), neighbours=NEIGHBOURS)
    with pytest.raises(ValueError, match="non-text values at rows \\[1\\]"):
        augment_pairs(Dataset.from_dict({"question": ["a", None], "sentence": ["b", "c"]}), neighbours=NEIGHBOURS)
