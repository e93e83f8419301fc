"""More unlabelled pairs for stage 1: augmented copies of a question–passage pool.

Stage 1 learns from the teachers alone, so any pair the teachers can label is a training example: an augmented copy
needs no golden label, only to stay close to the task's inputs. Two augmentations, as in TinyBERT's data
augmentation (Jiao et al., 2020: word replacement by embedding neighbours) and in retrieval practice (a question
re-paired with a passage that shares its words, a "hard negative"):

- word replacement: each word that has neighbours is replaced, with probability `replace_prob`, by one of its `k`
  nearest words in a model's input-embedding space (`word_neighbours`; no download: the student's own vocabulary);
- re-pairing: with probability `repair_prob` the passage is swapped for the passage of another question of the pool
  with the most words in common with the question (among `repair_candidates` drawn at random).

The teachers then label the copies (`label_with_teachers`) like any other row. Deterministic: row i of copy c
depends only on (seed, c, i), so a resumed or extended augmentation gives the same rows.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["augment_pairs", "word_neighbours"]

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters (any script); digits, spaces and punctuation are kept as they are


def word_neighbours(
    model_name_or_path: str, k: int = 8, min_length: int = 3, batch_size: int = 2048, **from_pretrained_kwargs
) -> dict[str, list[str]]:
    """Each whole-word entry of the model's vocabulary (letters only, `min_length`+ characters, not a `##` piece or a
    special token) mapped to its `k` nearest whole words by cosine similarity of the model's input embeddings."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
    model = AutoModel.from_pretrained(model_name_or_path, **from_pretrained_kwargs)
    special = set(tokenizer.all_special_tokens)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    marks = ("\u2581", "\u0120")  # word-start marks of sentencepiece / byte-level BPE vocabularies
    marked = any(token.startswith(marks) for token, _ in vocab)  # then unmarked tokens continue a word
    words, ids, seen = [], [], set()
    for token, index in vocab:
        if token in special or (marked and not token.startswith(marks)):
            continue
        word = token.lstrip("".join(marks))
        if len(word) < min_length or not _WORD.fullmatch(word) or word.lower() in seen:
            continue
        seen.add(word.lower())
        words.append(word.lower())
        ids.append(index)
    if len(words) <= k:
        raise ValueError(f"{model_name_or_path}: only {len(words)} whole words in its vocabulary, need more than k={k}")
    with torch.no_grad():
        vectors = model.get_input_embeddings().weight[torch.tensor(ids)].float()
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        neighbours = {}
        for start in range(0, len(words), batch_size):
            scores = vectors[start : start + batch_size] @ vectors.T
            rows = torch.arange(scores.shape[0])
            scores[rows, rows + start] = -float("inf")  # never a word's own neighbour
            top = scores.topk(k, dim=-1).indices.tolist()
            for offset, nearest in enumerate(top):
                neighbours[words[start + offset]] = [words[j] for j in nearest]
    return neighbours


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _replace_words(text: str, neighbours: dict[str, list[str]], prob: float, rng: np.random.Generator) -> str:
    def replace(match: re.Match) -> str:
        word = match.group(0)
        options = neighbours.get(word.lower())
        if not options or rng.random() >= prob:
            return word
        return _match_case(options[int(rng.integers(len(options)))], word)

    return _WORD.sub(replace, text)


def _word_set(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 3}


def augment_pairs(
    dataset,
    text_columns: tuple[str, ...] = ("question", "sentence"),
    copies: int = 1,
    *,
    neighbours: dict[str, list[str]] | None = None,
    replace_prob: float = 0.3,
    repair_prob: float = 0.0,
    repair_candidates: int = 16,
    seed: int = 0,
):
    """`copies` augmented copies of every row of `dataset` (a `datasets.Dataset`), as a new Dataset.

    Columns: `text_columns`, `augmented_from` (the source row's index) and `augmentation` (what was done). Every
    other column (a golden label above all) is dropped: it does not hold for the changed pair. Re-pairing needs two
    text columns (question first); rows whose question is the same as the source's are never chosen as partners.
    """
    from datasets import Dataset

    columns = list(text_columns)
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"augment_pairs: no column(s) {missing} in the dataset (columns: {dataset.column_names})")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    for name, p in (("replace_prob", replace_prob), ("repair_prob", repair_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if replace_prob > 0 and not neighbours:
        raise ValueError("replace_prob > 0 needs `neighbours` (e.g. word_neighbours(model_name_or_path))")
    if repair_prob > 0 and len(columns) < 2:
        raise ValueError("repair_prob > 0 needs two text columns (question, passage)")
    if len(dataset) == 0:
        raise ValueError("augment_pairs: the dataset is empty")
    texts = {c: list(dataset[c]) for c in columns}
    for c, values in texts.items():
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"augment_pairs: column {c!r} holds non-text values at rows {bad[:5]}")
    n = len(dataset)
    question_words = [_word_set(q) for q in texts[columns[0]]] if repair_prob > 0 else None
    passage_words = [_word_set(p) for p in texts[columns[1]]] if repair_prob > 0 else None
    out = {c: [] for c in columns} | {"augmented_from": [], "augmentation": []}
    for copy in range(copies):
        for i in range(n):
            rng = np.random.default_rng([seed, copy, i])
            row = {c: texts[c][i] for c in columns}
            done = []
            if repair_prob > 0 and n > 1 and rng.random() < repair_prob:
                candidates = rng.choice(n, size=min(repair_candidates, n), replace=False)
                candidates = [j for j in candidates if texts[columns[0]][j] != row[columns[0]]]
                if candidates:
                    overlap = [len(question_words[i] & passage_words[j]) for j in candidates]
                    row[columns[1]] = texts[columns[1]][candidates[int(np.argmax(overlap))]]
                    done.append("repair")
            if replace_prob > 0:
                changed = {c: _replace_words(row[c], neighbours, replace_prob, rng) for c in columns}
                if changed != row:
                    done.append("words")
                row = changed
            for c in columns:
                out[c].append(row[c])
            out["augmented_from"].append(i)
            out["augmentation"].append("+".join(done) or "none")
    return Dataset.from_dict(out)
