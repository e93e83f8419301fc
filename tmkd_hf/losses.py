"""Distillation losses as small pure functions (per example, no reduction), tested on their own.

Every function returns one value per example (shape `[batch]`) so the trainer can weight, mask and normalise
exactly (gradient accumulation, rows without labels) before reducing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def kl_divergence_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = True
) -> torch.Tensor:
    """KL(teacher ‖ student) of the tempered softmax distributions, per example: `[B, C] x [B, C] -> [B]`."""
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    loss = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return loss * temperature**2 if t2_scaling else loss


def soft_cross_entropy_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = True
) -> torch.Tensor:
    """Cross-entropy of the student against the tempered teacher distribution, per example: `[B]`.

    Equals `kl_divergence_loss` plus the teacher's entropy (a constant for the student), so its gradients match KL.
    """
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_p = F.softmax(teacher_logits.float() / temperature, dim=-1)
    loss = -(teacher_p * student_logp).sum(-1)
    return loss * temperature**2 if t2_scaling else loss


def mse_logits_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between raw logits, averaged over classes, per example: `[B]`."""
    return (student_logits.float() - teacher_logits.float()).pow(2).mean(-1)


def soft_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "kl",
    temperature: float = 1.0,
    t2_scaling: bool = True,
) -> torch.Tensor:
    """Dispatch to the soft loss named `kind` ('kl', 'soft_ce' or 'mse'); one value per example."""
    if kind == "kl":
        return kl_divergence_loss(student_logits, teacher_logits, temperature, t2_scaling)
    if kind == "soft_ce":
        return soft_cross_entropy_loss(student_logits, teacher_logits, temperature, t2_scaling)
    if kind == "mse":
        return mse_logits_loss(student_logits, teacher_logits)
    raise ValueError(f"Unknown soft loss {kind!r}; expected 'kl', 'soft_ce' or 'mse'.")


def hard_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Golden-label loss per example and the mask of rows that have a label.

    Classification (`C > 1`): cross-entropy (with `label_smoothing`, as `TrainingArguments.label_smoothing_factor`
    gives a plain Trainer), rows labelled `-100` are ignored. Regression (`C == 1`): squared error, rows with a NaN
    label are ignored. Returns `(loss [B], mask [B])` with `loss == 0` where `mask` is False.
    """
    if logits.shape[-1] == 1:
        target = labels.to(logits.dtype).view(-1)
        mask = ~torch.isnan(target)
        diff = logits.float().view(-1) - torch.nan_to_num(target.float())
        return torch.where(mask, diff.pow(2), torch.zeros_like(diff)), mask
    labels = labels.long().view(-1)
    mask = labels != IGNORE_INDEX
    loss = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    return torch.where(mask, loss, torch.zeros_like(loss)), mask


def aggregate_teacher_logits(
    teacher_logits: torch.Tensor, weights: torch.Tensor, mode: str = "mean_logits", temperature: float = 1.0
) -> torch.Tensor:
    """Combine N teachers `[B, N, C]` into one `[B, C]` target for a single-head student.

    `mean_logits`: weighted mean of the logits. `mean_probs`: logits whose tempered softmax is the weighted mean of
    the teachers' tempered distributions, `T * log(sum_i w_i softmax(t_i / T))`, so the soft losses see exactly the
    averaged distribution.
    """
    weights = weights.to(device=teacher_logits.device, dtype=torch.float32).view(1, -1, 1)
    teacher_logits = teacher_logits.float()
    if mode == "mean_logits":
        return (teacher_logits * weights).sum(1)
    if mode == "mean_probs":
        probs = (F.softmax(teacher_logits / temperature, dim=-1) * weights).sum(1)
        return temperature * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    raise ValueError(f"Unknown teacher_aggregation {mode!r}; expected 'mean_logits' or 'mean_probs'.")


def multi_teacher_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    soft_loss_kind: str = "kl",
    t2_scaling: bool = True,
    teacher_weights: torch.Tensor | None = None,
    teacher_aggregation: str = "mean_logits",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TMKD objective per example, and its parts for logging.

    Args:
        student_logits: `[B, H, C]` from a multi-head student (head *i* learns from teacher *i*, so `H == N`) or
            `[B, C]` from a single-head student (taught by the `teacher_aggregation` of all teachers).
        teacher_logits: `[B, N, C]`, or None (golden labels only).
        labels: `[B]` class ids (`-100` = no label) or regression targets (`NaN` = no label), or None.
        label_smoothing: smoothing of the golden-label cross-entropy (the soft targets are left as they are).

    Returns `(per_example [B], parts)`: `alpha * soft + (1 - alpha) * hard` for rows that have both a label and
    teacher logits, else whichever of the two the row has (so unlabelled rows mixed into a labelled batch learn
    from the teachers alone); with several heads each term is the `teacher_weights`-weighted sum over heads.
    `parts` holds batch means: `loss_soft`, `loss_hard`, and `loss_soft_teacher_<i>` per teacher.
    """
    multi_head = student_logits.dim() == 3
    num_labels = student_logits.shape[-1]
    if teacher_logits is None and labels is None:
        raise ValueError("Nothing to learn from: the batch has neither teacher_logits nor labels.")
    if num_labels == 1:
        soft_loss_kind = "mse"  # a single regression output has no distribution to match
    parts: dict[str, torch.Tensor] = {}
    soft = hard = label_mask = None

    if teacher_logits is not None:
        if teacher_logits.dim() != 3:
            raise ValueError(
                f"teacher_logits must be [batch, num_teachers, num_labels], got shape {tuple(teacher_logits.shape)}."
            )
        num_teachers = teacher_logits.shape[1]
        if teacher_logits.shape[0] != student_logits.shape[0]:
            raise ValueError(
                f"teacher_logits hold {teacher_logits.shape[0]} examples but the student has {student_logits.shape[0]} "
                "in this batch: each example needs its own teacher_logits row (use DataCollatorWithTeacherLogits)."
            )
        if teacher_logits.shape[-1] != num_labels:
            raise ValueError(
                f"teacher_logits have {teacher_logits.shape[-1]} labels but the student predicts {num_labels}. "
                "Teachers and student must share one label set: check num_labels/id2label of the student and "
                "relabel with teachers of the same task."
            )
        if multi_head and student_logits.shape[1] != num_teachers:
            raise ValueError(
                f"The student has {student_logits.shape[1]} heads but teacher_logits hold {num_teachers} teachers. "
                f"Build it with MultiHeadStudent.from_pretrained(..., num_teachers={num_teachers}), or use a "
                "single-head student to learn from the averaged teachers."
            )
        if teacher_weights is None:
            teacher_weights = torch.full((num_teachers,), 1.0 / num_teachers)
        if teacher_weights.numel() != num_teachers:
            raise ValueError(
                f"teacher_weights has {teacher_weights.numel()} values but teacher_logits hold {num_teachers} "
                "teachers. Give exactly one weight per teacher."
            )
        weights = teacher_weights.to(device=student_logits.device, dtype=torch.float32)
        if multi_head:
            per_teacher = torch.stack(
                [
                    soft_loss(student_logits[:, i], teacher_logits[:, i], soft_loss_kind, temperature, t2_scaling)
                    for i in range(num_teachers)
                ],
                dim=1,
            )  # [B, N]
            soft = (per_teacher * weights).sum(1)
            for i in range(num_teachers):
                parts[f"loss_soft_teacher_{i}"] = per_teacher[:, i].detach().mean()
        else:
            if num_labels == 1 and teacher_aggregation == "mean_probs":
                raise ValueError("teacher_aggregation='mean_probs' is undefined for regression; use 'mean_logits'.")
            target = aggregate_teacher_logits(teacher_logits, weights, teacher_aggregation, temperature)
            soft = soft_loss(student_logits, target, soft_loss_kind, temperature, t2_scaling)
        parts["loss_soft"] = soft.detach().mean()

    if labels is not None:
        if labels.numel() != student_logits.shape[0]:
            raise ValueError(
                f"labels hold {labels.numel()} values but the student has {student_logits.shape[0]} examples in this "
                "batch: give one label per example (-100, or NaN for regression, where there is none)."
            )
        if multi_head:
            num_heads = student_logits.shape[1]
            head_weights = (weights if teacher_logits is not None else torch.full((num_heads,), 1.0 / num_heads)).to(
                student_logits.device
            )
            per_head = [hard_loss(student_logits[:, h], labels, label_smoothing) for h in range(num_heads)]
            label_mask = per_head[0][1]
            hard = sum(w * loss for w, (loss, _) in zip(head_weights, per_head))
        else:
            hard, label_mask = hard_loss(student_logits, labels, label_smoothing)
        parts["loss_hard"] = hard.detach().sum() / label_mask.sum().clamp_min(1)

    if soft is None:
        return hard, parts
    if hard is None:
        return soft, parts
    # Row by row: a row without a label (-100 / NaN) in a labelled batch learns from the teachers alone.
    return torch.where(label_mask, alpha * soft + (1 - alpha) * hard, soft), parts
