"""transformers' own Trainer tests, run against `transformers.Trainer` or with our trainer in its place.

An external measure of "drop-in" (DESIGN.md): with nothing to distil, every peer test that passes with `Trainer`
should pass with `MultiTeacherDistillationTrainer`. The tests are not copied into the project; they are read from
`../shared/peer/transformers-trainer/` (override with `--peer-dir`), copied to a temporary folder (the shared copy is
read-only and pytest writes caches) and run there in this process.

`--trainer tmkd` replaces `transformers.Trainer` and `transformers.trainer.Trainer` before pytest imports the test
modules with `PlainFineTuningTrainer`: the thin subclass a user writes to use our trainer for plain fine-tuning
(`alpha=0`, no teachers), changing the argument default through `args_class`.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/peer_trainer_tests.py --trainer hf    # the baseline
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/peer_trainer_tests.py --trainer tmkd  # ours

Extra arguments go to pytest (e.g. `-k save`, `-x`, `tests/trainer/test_trainer_data.py`). Needs
`pip install parameterized pytest-timeout optuna sentencepiece`.

`--ga-check` (no pytest) measures why sequence classifiers keep our loss when nothing is distilled: a tiny BERT
classifier trained with SGD at `gradient_accumulation_steps=2` x batch 4 against one batch of 8, by `Trainer` and by
ours; it prints the ratio of the two weight updates (1.0 = exact) and both logged training losses.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/peer_trainer_tests.py --ga-check
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # before transformers reads them
    os.environ.setdefault(_name, "1")

import transformers  # noqa: E402
import transformers.trainer  # noqa: E402

from tmkd_hf import DistillationArguments, MultiTeacherDistillationTrainer  # noqa: E402

PEER_DIR = Path(__file__).resolve().parents[2] / "shared" / "peer" / "transformers-trainer"


@dataclass
class PlainFineTuningArguments(DistillationArguments):
    """What a user writes to change a default: plain fine-tuning on labels, no teacher loss."""

    alpha: float = 0.0


class PlainFineTuningTrainer(MultiTeacherDistillationTrainer):
    """Our trainer as a plain `Trainer` (no teachers); `args_class` upgrades plain `TrainingArguments` to alpha 0."""

    args_class = PlainFineTuningArguments


def install_our_trainer() -> None:
    """Put `PlainFineTuningTrainer` where `from transformers import Trainer` finds it (before the tests import it)."""
    transformers.Trainer = PlainFineTuningTrainer
    transformers.trainer.Trainer = PlainFineTuningTrainer


def gradient_accumulation_check() -> None:
    """Print, for `Trainer` and ours, the GA-2 over full-batch weight-update ratio of a tiny BERT classifier."""
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    rng = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(5, 100, (8, 12), generator=rng).tolist(),
                              "labels": torch.randint(0, 2, (8,), generator=rng).tolist()})
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    for trainer_class in (transformers.Trainer, MultiTeacherDistillationTrainer):
        updates, losses = [], []
        for batch_size, steps in ((8, 1), (4, 2)):
            torch.manual_seed(0)
            model = BertForSequenceClassification(config)
            before = model.classifier.weight.detach().clone()
            with tempfile.TemporaryDirectory() as out:
                args = DistillationArguments(
                    out, alpha=0.0, per_device_train_batch_size=batch_size, gradient_accumulation_steps=steps,
                    num_train_epochs=1, optim="sgd", learning_rate=0.01, train_sampling_strategy="sequential",
                    report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                )
                trainer = trainer_class(model=model, args=args, train_dataset=data)
                trainer.train()
            updates.append((model.classifier.weight.detach() - before).norm().item())
            losses.append(trainer.state.log_history[-1]["train_loss"])
        print(f"{trainer_class.__name__}: update at GA 2 / update of one batch = {updates[1] / updates[0]:.2f}; "
              f"train_loss {losses[0]:.3f} (one batch) vs {losses[1]:.3f} (GA 2)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", choices=("hf", "tmkd"), help="hf: transformers.Trainer; tmkd: ours")
    parser.add_argument("--ga-check", action="store_true", help="only the gradient-accumulation check (no pytest)")
    parser.add_argument("--peer-dir", type=Path, default=PEER_DIR, help="holds tests/trainer/ (default: %(default)s)")
    args, pytest_args = parser.parse_known_args(argv)
    if args.ga_check:
        gradient_accumulation_check()
        return 0
    if args.trainer is None:
        parser.error("--trainer hf|tmkd is required (or --ga-check)")
    if not (args.peer_dir / "tests" / "trainer").is_dir():
        parser.error(f"no tests/trainer/ under {args.peer_dir} (set --peer-dir)")

    import pytest

    if args.trainer == "tmkd":
        install_our_trainer()
        print("transformers.Trainer is PlainFineTuningTrainer (MultiTeacherDistillationTrainer, alpha=0, no teachers)")
    with tempfile.TemporaryDirectory(prefix="peer-trainer-tests-") as tmp:
        root = Path(tmp) / "transformers-trainer"
        shutil.copytree(args.peer_dir, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        for path in root.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)  # the shared copy is read-only
        os.chdir(root)
        return int(pytest.main(["-q", "-p", "no:cacheprovider", "-rfE", *(pytest_args or ["tests/trainer"])]))


if __name__ == "__main__":
    sys.exit(main())
