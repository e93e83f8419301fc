"""`DataCollatorWithTeacherLogits`: dynamic padding plus the cached teacher soft labels, stacked per batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

TEACHER_LOGITS = "teacher_logits"


def stack_teacher_logits(rows: list[Any]) -> torch.Tensor:
    """Stack per-example teacher logits into a float32 `[batch, num_teachers, num_labels]` tensor.

    Each row is `[num_teachers, num_labels]` (list, NumPy array or tensor); a 1-D row counts as one teacher.
    Rows of different shapes and non-finite values are reported with the offending positions.
    """
    tensors = []
    for i, row in enumerate(rows):
        if torch.is_tensor(row):
            t = row.float()
        else:
            try:
                t = torch.as_tensor(np.asarray(row, dtype=np.float32))
            except (ValueError, TypeError) as err:  # ragged ([[1, 2], [3]]) or not numbers
                lengths = [len(r) if hasattr(r, "__len__") else None for r in row] if hasattr(row, "__iter__") else None
                raise ValueError(
                    f"teacher_logits of example {i} in the batch is not a [num_teachers, num_labels] array of numbers "
                    f"(inner lengths {lengths}: {err}). Every teacher row needs one logit per label; build the "
                    "column with tmkd_hf.label_with_teachers."
                ) from None
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2:
            raise ValueError(
                f"teacher_logits of example {i} in the batch has shape {tuple(t.shape)}; each example needs "
                "[num_teachers, num_labels]. Build the column with tmkd_hf.label_with_teachers."
            )
        tensors.append(t)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"teacher_logits rows have different shapes in one batch: {sorted(shapes)}. Every example must be "
            "labelled by the same teachers with the same label set; relabel the dataset in one labelling pass."
        )
    stacked = torch.stack(tensors)
    check_finite_teacher_logits(stacked)
    return stacked


def check_finite_teacher_logits(teacher_logits: torch.Tensor) -> None:
    """Raise a clear error when teacher logits hold NaN or inf (a broken teacher or a corrupted cache)."""
    finite = torch.isfinite(teacher_logits)
    if not bool(finite.all()):
        bad_rows = (~finite).flatten(1).any(-1).nonzero().flatten().tolist()
        bad_teachers = (~finite).any(-1).any(0).nonzero().flatten().tolist()
        raise ValueError(
            f"teacher_logits contain NaN or inf: {len(bad_rows)} of {teacher_logits.shape[0]} examples in this batch "
            f"(batch positions {bad_rows[:10]}), from teacher index(es) {bad_teachers}. A teacher probably diverged "
            "or ran in too low a precision; relabel with that teacher in float32 or drop those rows."
        )


@dataclass
class DataCollatorWithTeacherLogits(DataCollatorWithPadding):
    """Pad the student inputs like `DataCollatorWithPadding` and stack the teacher soft labels.

    Each feature may carry `teacher_logits` of shape `[num_teachers, num_labels]` (from
    [`label_with_teachers`]); the batch gets a float32 tensor `[batch, num_teachers, num_labels]`. `labels` are
    optional (TMKD stage 1 trains on soft labels alone). Either every feature has teacher logits or none has
    (then the trainer's online teachers, if any, produce them).

    Example:
    ```python
    >>> collator = DataCollatorWithTeacherLogits(tokenizer)
    >>> batch = collator([{"input_ids": [101, 7592, 102], "teacher_logits": [[0.2, 1.3], [0.4, 0.9]]},
    ...                   {"input_ids": [101, 102], "teacher_logits": [[1.1, -0.5], [0.8, -0.2]]}])
    >>> batch["input_ids"].shape, batch["teacher_logits"].shape
    (torch.Size([2, 3]), torch.Size([2, 2, 2]))
    ```
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        has_logits = [TEACHER_LOGITS in f and f[TEACHER_LOGITS] is not None for f in features]
        if any(has_logits) and not all(has_logits):
            missing = [i for i, h in enumerate(has_logits) if not h]
            raise ValueError(
                f"Some examples in the batch have no teacher_logits (batch positions {missing[:10]}). Label every "
                "row of the dataset (tmkd_hf.label_with_teachers) or none of them (and pass teachers= to the trainer)."
            )
        teacher_rows = [f[TEACHER_LOGITS] for f in features] if all(has_logits) and features else None
        features = [{k: v for k, v in f.items() if k != TEACHER_LOGITS} for f in features]
        batch = super().__call__(features)
        if teacher_rows is not None:
            stacked = stack_teacher_logits(teacher_rows)
            batch[TEACHER_LOGITS] = stacked if self.return_tensors == "pt" else stacked.numpy()
        return batch
