"""Train a tiny 3-head student with real FSDP2 sharding (`fully_shard`, gloo, CPU), then save it through the trainer.

Used by tests/test_distributed.py. accelerate enables FSDP on accelerators only (an FSDP config on CPU falls back to
plain DDP), so the Trainer cannot shard here; this script shards the student itself with torch's `fully_shard`,
trains it with plain SGD on `MultiTeacherDistillationTrainer.compute_loss`, gathers the full weights the way
`Trainer.save_model` does under FSDP (`get_model_state_dict(full_state_dict=True)`) and hands them to the trainer's
`_save` -- for a training checkpoint (every head) and for the final merged save. Run alone (1 process, no sharding,
the module's own weights) it writes the reference: both outputs must match.

    python fsdp_tiny.py OUT BATCH                      # reference
    torchrun --nproc_per_node 2 fsdp_tiny.py OUT BATCH/2
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import WORDS, pair_dataset, tiny_model, tokenize  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402

from tmkd_hf import (  # noqa: E402
    DataCollatorWithTeacherLogits,
    DistillationArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
)
from tmkd_hf.distributed import leave_process_group  # noqa: E402

STEPS, ROWS = 4, 32


def main(output_dir: str, batch_size: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    raw = pair_dataset(ROWS, seed=0)
    logits = np.random.default_rng(0).normal(size=(ROWS, 3, 2)).astype(np.float32)
    ds = tokenize(raw.add_column("teacher_logits", logits.tolist()), tokenizer)
    model = tiny_model("bert", seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = MultiHeadStudent(model, 3).train()
    args = DistillationArguments(
        output_dir=output_dir, alpha=0.5, temperature=2.0, report_to="none", save_strategy="no", use_cpu=True
    )
    # the trainer first: under torchrun its arguments set up the gloo process group that fully_shard then uses
    trainer = MultiTeacherDistillationTrainer(model=student, args=args, processing_class=tokenizer)
    rank = args.process_index
    if world == 1:  # the untrained student, so the test can tell that training moved the weights
        student.save_pretrained(str(Path(output_dir) / "initial"), merged=True)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in student.model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(student)
        sharded = [n for n, p in student.named_parameters() if type(p).__name__ == "DTensor"]
        assert sharded, "fully_shard left no parameter sharded"
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        Path(output_dir, f"sharded_rank{rank}.txt").write_text(str(len(sharded)))
    collator = DataCollatorWithTeacherLogits(tokenizer)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    losses = []
    for step in range(STEPS):  # step s: global rows [s*B*world, (s+1)*B*world); this rank takes its contiguous part
        start = (step * world + rank) * batch_size
        batch = collator([ds[i] for i in range(start, start + batch_size)])
        loss = trainer.compute_loss(student, batch)
        loss.backward()  # FSDP2 averages the gradients over ranks: the global batch's mean loss
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))

    if world > 1:  # what Trainer.save_model gathers under FSDP (a collective: every rank takes part)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state_dict = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state_dict = None
    if rank == 0:
        # a folder named as Trainer._save_checkpoint names it keeps every head; any other is the merged student
        checkpoint = Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{STEPS}"
        trainer._save(str(checkpoint), state_dict=state_dict)
        checkpoint.rename(Path(output_dir) / "checkpoint")
        trainer._save(str(Path(output_dir) / "merged"), state_dict=state_dict)
        Path(output_dir, "losses.txt").write_text("\n".join(map(str, losses)))
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
