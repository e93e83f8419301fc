"""Shared fixtures: tiny models built from configs and a tiny WordPiece tokenizer, all offline."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DistilBertConfig,
    MPNetConfig,
    RobertaConfig,
)

WORDS = (
    "what who when where why how which is was are the a an of in on to for by with from city river king queen "
    "year war born built name capital country people music film book team game science water light energy "
    "first last largest oldest new old north south east west played wrote found called made used known"
).split()


@pytest.fixture(scope="session")
def tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tok = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tok("city river")["input_ids"][1:3] == [vocab.index("city"), vocab.index("river")]
    return tok


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    """A recipe script (`recipes/<name>.py`) imported by its path, as the tests call its functions directly."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def tiny_config(family: str = "bert", num_labels: int = 2, vocab_size: int = 128, **kwargs):
    common = dict(vocab_size=vocab_size, num_labels=num_labels, **kwargs)
    if family == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **common)
    if family == "roberta":
        return RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=130,
            pad_token_id=0,
            **common,
        )
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, pad_token_id=0, **common)
    if family == "mpnet":
        return MPNetConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            pad_token_id=0,
            **common,
        )
    raise ValueError(family)


def tiny_model(family: str = "bert", num_labels: int = 2, seed: int = 0, head_scale: float = 1.0, **kwargs):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels, **kwargs))
    if head_scale != 1.0:  # sharpen a random teacher so its predictions vary from input to input
        from tmkd_hf.modeling import find_classification_head

        head = model.get_submodule(find_classification_head(model, num_labels))
        with torch.no_grad():
            head.weight.mul_(head_scale)
    return model.eval()


def random_sentence(rng: random.Random, n_min: int = 3, n_max: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(n_min, n_max)))


def pair_dataset(n: int = 64, seed: int = 0, num_labels: int = 2, with_labels: bool = True) -> Dataset:
    rng = random.Random(seed)
    data = {
        "question": [random_sentence(rng, 3, 8) for _ in range(n)],
        "sentence": [random_sentence(rng, 4, 16) for _ in range(n)],
    }
    if with_labels:
        data["label"] = [rng.randrange(num_labels) for _ in range(n)]
    return Dataset.from_dict(data)


def tokenize(dataset: Dataset, tokenizer, max_length: int = 32) -> Dataset:
    return dataset.map(
        lambda b: tokenizer(b["question"], b["sentence"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["question", "sentence"],
    )


@pytest.fixture
def teacher_dirs(tmp_path, tokenizer):
    """Three saved tiny BERT teachers (different seeds), each with the shared tokenizer."""
    dirs = []
    for i in range(3):
        path = tmp_path / f"teacher-{i}"
        tiny_model("bert", seed=100 + i, head_scale=20.0).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(str(path))
    return dirs


KEYWORDS = ("city", "river", "king", "queen", "capital")


def keyword_dataset(n: int = 128, seed: int = 0, with_labels: bool = True) -> Dataset:
    """A learnable pair task: label 1 when the sentence names one of KEYWORDS (about half the rows)."""
    rng = random.Random(seed)
    plain = [w for w in WORDS if w not in KEYWORDS]
    questions, sentences, labels = [], [], []
    for _ in range(n):
        words = [rng.choice(plain) for _ in range(rng.randint(4, 12))]
        label = rng.random() < 0.5
        if label:
            words.insert(rng.randrange(len(words) + 1), rng.choice(KEYWORDS))
        questions.append(" ".join(rng.choice(plain) for _ in range(rng.randint(3, 6))))
        sentences.append(" ".join(words))
        labels.append(int(label))
    data = {"question": questions, "sentence": sentences}
    if with_labels:
        data["label"] = labels
    return Dataset.from_dict(data)


@pytest.fixture(scope="session")
def trained_teacher_dirs(tmp_path_factory, tokenizer):
    """Three tiny BERT teachers fine-tuned (alpha=0, i.e. plain fine-tuning) on the keyword task, saved."""
    from tmkd_hf import DistillationArguments, MultiTeacherDistillationTrainer

    root = tmp_path_factory.mktemp("trained-teachers")
    train = tokenize(keyword_dataset(256, seed=1), tokenizer)
    dirs = []
    for i, lr in enumerate((3e-3, 4e-3, 5e-3)):
        args = DistillationArguments(
            output_dir=str(root / f"run-{i}"),
            alpha=0.0,
            num_train_epochs=6,
            learning_rate=lr,
            seed=i,
            per_device_train_batch_size=16,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = MultiTeacherDistillationTrainer(
            model=tiny_model("bert", seed=10 + i), args=args, train_dataset=train, processing_class=tokenizer
        )
        trainer.train()
        path = root / f"teacher-{i}"
        trainer.save_model(str(path))
        dirs.append(str(path))
    return dirs


def count_label_shards(monkeypatch) -> list[int]:
    """Record the rows of every shard the teachers label from now on (an empty list: nothing was relabelled)."""
    from tmkd_hf import labelling

    shards: list[int] = []
    real_label_shard = labelling._label_shard

    def counted(*args, **kwargs):
        shards.append(len(args[2]["length"]))  # rows of the shard
        return real_label_shard(*args, **kwargs)

    monkeypatch.setattr(labelling, "_label_shard", counted)
    return shards
