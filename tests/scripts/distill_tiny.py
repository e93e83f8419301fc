"""Train a tiny 3-head student on cached teacher logits; run alone or under torchrun/accelerate launch.

Used by tests/test_distributed.py: with sequential sampling, 2 processes x batch 4 see exactly the rows that
1 process x batch 8 sees at each step, so the final weights (plain SGD) and the logged losses must match.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import pair_dataset, tiny_model, tokenize  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

from tmkd_hf import DistillationArguments, MultiHeadStudent, MultiTeacherDistillationTrainer  # noqa: E402
from tmkd_hf.distributed import leave_process_group  # noqa: E402


def main(output_dir: str, batch_size: int) -> None:
    from conftest import WORDS

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    raw = pair_dataset(32, seed=0)
    logits = np.random.default_rng(0).normal(size=(32, 3, 2)).astype(np.float32)
    ds = tokenize(raw.add_column("teacher_logits", logits.tolist()), tokenizer)
    model = tiny_model("bert", seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = DistillationArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        num_train_epochs=2,
        optim="sgd",  # AdamW is scale-invariant: it would hide a loss scaled by the world size or the GA steps
        learning_rate=0.5,
        alpha=0.5,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    trainer = MultiTeacherDistillationTrainer(
        model=MultiHeadStudent(model, 3), args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    if trainer.is_world_process_zero():
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, f"{output_dir}/params.pt")
        Path(f"{output_dir}/world_size.txt").write_text(str(args.world_size))
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        Path(f"{output_dir}/losses.txt").write_text("\n".join(map(str, losses)))
    trainer.save_model()
    leave_process_group()  # every rank waits for the writer, then leaves the gloo group cleanly


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
