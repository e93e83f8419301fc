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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainer", choices=("hf", "tmkd"), required=True, help="hf: transformers.Trainer; tmkd: ours")
    parser.add_argument("--peer-dir", type=Path, default=PEER_DIR, help="holds tests/trainer/ (default: %(default)s)")
    args, pytest_args = parser.parse_known_args(argv)
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
