"""Distillation losses as small pure functions (per example, no reduction), tested on their own.

Every function returns one value per example (shape `[batch]`) so the trainer can weight, mask and normalise
exactly (gradient accumulation, rows without labels) before reducing. The problem types are transformers' sequence
classifiers' (`config.problem_type`): single-label classification (softmax), multi-label classification (one sigmoid
per label: the hard loss is `BCEWithLogits`, the soft losses compare per-label Bernoulli distributions) and
regression (squared error; soft loss MSE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


def resolve_problem_type(problem_type: str | None, num_labels: int | None, labels: torch.Tensor | None = None) -> str:
    """The problem type as transformers' sequence classifiers decide it: one output is regression; else the config's
    `problem_type` if set; else multi-label when the labels are a float `[batch, num_labels]` matrix, single-label
    otherwise (class ids, also given as floats)."""
    if num_labels == 1:
        return REGRESSION
    if problem_type in (SINGLE_LABEL, MULTI_LABEL, REGRESSION):
        return problem_type
    if labels is not None and labels.dim() == 2 and labels.shape[-1] > 1 and labels.is_floating_point():
        return MULTI_LABEL
    return SINGLE_LABEL


def label_mask(labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """`[batch]` bool: the rows that carry a golden label. Class ids: not `-100`; regression targets: not NaN;
    multi-label: at least one label not `-100`."""
    if problem_type == SINGLE_LABEL:
        return labels.reshape(-1) != IGNORE_INDEX
    targets = labels.reshape(labels.shape[0], -1) if labels.dim() > 0 else labels.reshape(1, 1)
    valid = ~torch.isnan(targets) if problem_type == REGRESSION else targets != IGNORE_INDEX
    return valid.any(-1)


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


def _bernoulli_log_probs(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    scaled = logits.float() / temperature
    return F.logsigmoid(scaled), F.logsigmoid(-scaled)  # log p(label on), log p(label off)


def multi_label_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = True
) -> torch.Tensor:
    """Multi-label KL: each label is its own Bernoulli (tempered sigmoid), KL(teacher ‖ student) averaged over the
    labels, per example `[B]` (the mean, as `BCEWithLogitsLoss` averages over labels)."""
    s_on, s_off = _bernoulli_log_probs(student_logits, temperature)
    t_on, t_off = _bernoulli_log_probs(teacher_logits, temperature)
    loss = (t_on.exp() * (t_on - s_on) + t_off.exp() * (t_off - s_off)).mean(-1)
    return loss * temperature**2 if t2_scaling else loss


def multi_label_soft_cross_entropy_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, t2_scaling: bool = True
) -> torch.Tensor:
    """Binary cross-entropy of the student's tempered sigmoids against the teacher's probabilities, averaged over the
    labels, per example `[B]`; equals `multi_label_kl_loss` plus the teacher's entropy (same gradients)."""
    s_on, s_off = _bernoulli_log_probs(student_logits, temperature)
    t_p = torch.sigmoid(teacher_logits.float() / temperature)
    loss = -(t_p * s_on + (1 - t_p) * s_off).mean(-1)
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
    multi_label: bool = False,
) -> torch.Tensor:
    """Dispatch to the soft loss named `kind` ('kl', 'soft_ce' or 'mse'); one value per example. `multi_label`: one
    sigmoid per label instead of a softmax over the labels."""
    if kind == "kl":
        loss_fn = multi_label_kl_loss if multi_label else kl_divergence_loss
        return loss_fn(student_logits, teacher_logits, temperature, t2_scaling)
    if kind == "soft_ce":
        loss_fn = multi_label_soft_cross_entropy_loss if multi_label else soft_cross_entropy_loss
        return loss_fn(student_logits, teacher_logits, temperature, t2_scaling)
    if kind == "mse":
        return mse_logits_loss(student_logits, teacher_logits)
    raise ValueError(f"Unknown soft loss {kind!r}; expected 'kl', 'soft_ce' or 'mse'.")


def hard_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, problem_type: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Golden-label loss per example and the mask of rows that have a label, as transformers' sequence classifiers
    compute it for `problem_type` (see `resolve_problem_type`).

    Single-label classification: cross-entropy (with `label_smoothing`, as `TrainingArguments.label_smoothing_factor`
    gives a plain Trainer), rows labelled `-100` are ignored. Regression: squared error, NaN targets are ignored.
    Multi-label: `BCEWithLogits` of each label (a `[batch, num_labels]` matrix of 0/1 or probabilities), labels `-100`
    ignored. Several outputs per row are averaged over the row's labelled ones. Returns `(loss [B], mask [B])` with
    `loss == 0` where `mask` is False.
    """
    problem_type = resolve_problem_type(problem_type, logits.shape[-1], labels)
    if problem_type == SINGLE_LABEL:
        labels = labels.long().view(-1)
        mask = labels != IGNORE_INDEX
        loss = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
        return torch.where(mask, loss, torch.zeros_like(loss)), mask
    outputs = logits.float().reshape(logits.shape[0], -1)
    if labels.numel() != outputs.numel():
        raise ValueError(
            f"{problem_type} needs one target per output: labels of shape {tuple(labels.shape)} for outputs of shape "
            f"{tuple(logits.shape)}."
        )
    targets = labels.float().reshape(outputs.shape)
    if problem_type == REGRESSION:
        valid = ~torch.isnan(targets)
        per_output = (outputs - torch.nan_to_num(targets)).pow(2)
    else:
        valid = targets != IGNORE_INDEX
        per_output = F.binary_cross_entropy_with_logits(outputs, targets.clamp(0, 1), reduction="none")
    per_output = torch.where(valid, per_output, torch.zeros_like(per_output))
    return per_output.sum(-1) / valid.sum(-1).clamp_min(1), valid.any(-1)


def aggregate_teacher_logits(
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    mode: str = "mean_logits",
    temperature: float = 1.0,
    multi_label: bool = False,
) -> torch.Tensor:
    """Combine N teachers `[B, N, C]` into one `[B, C]` target for a single-head student.

    `mean_logits`: weighted mean of the logits. `mean_probs`: logits whose tempered softmax is the weighted mean of
    the teachers' tempered distributions, `T * log(sum_i w_i softmax(t_i / T))`, so the soft losses see exactly the
    averaged distribution (multi-label: per label, the logit of the weighted mean of the tempered sigmoids).
    """
    weights = weights.to(device=teacher_logits.device, dtype=torch.float32).view(1, -1, 1)
    teacher_logits = teacher_logits.float()
    if mode == "mean_logits":
        return (teacher_logits * weights).sum(1)
    if mode == "mean_probs" and multi_label:
        probs = (torch.sigmoid(teacher_logits / temperature) * weights).sum(1)
        tiny = torch.finfo(probs.dtype).tiny
        return temperature * (torch.log(probs.clamp_min(tiny)) - torch.log((1 - probs).clamp_min(tiny)))
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
    problem_type: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The TMKD objective per example, and its parts for logging.

    Args:
        student_logits: `[B, H, C]` from a multi-head student (head *i* learns from teacher *i*, so `H == N`) or
            `[B, C]` from a single-head student (taught by the `teacher_aggregation` of all teachers).
        teacher_logits: `[B, N, C]`, or None (golden labels only).
        labels: `[B]` class ids (`-100` = no label), regression targets (`NaN` = no label) or `[B, C]` multi-label
            targets (`-100` = no label), or None.
        label_smoothing: smoothing of the golden-label cross-entropy (the soft targets are left as they are).
        problem_type: the student config's `problem_type`; None infers it as transformers does
            (`resolve_problem_type`). Multi-label compares one sigmoid per label, regression uses MSE.

    Returns `(per_example [B], parts)`: `alpha * soft + (1 - alpha) * hard` for rows that have both a label and
    teacher logits, else whichever of the two the row has (so unlabelled rows mixed into a labelled batch learn
    from the teachers alone); with several heads each term is the `teacher_weights`-weighted sum over heads.
    `parts` holds batch means: `loss_soft`, `loss_hard`, and `loss_soft_teacher_<i>` per teacher.
    """
    multi_head = student_logits.dim() == 3
    num_labels = student_logits.shape[-1]
    if teacher_logits is None and labels is None:
        raise ValueError("Nothing to learn from: the batch has neither teacher_logits nor labels.")
    problem_type = resolve_problem_type(problem_type, num_labels, labels)
    multi_label = problem_type == MULTI_LABEL
    if problem_type == REGRESSION:
        soft_loss_kind = "mse"  # regression outputs have no distribution to match
    parts: dict[str, torch.Tensor] = {}
    soft = hard = labelled = None

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
                    soft_loss(
                        student_logits[:, i], teacher_logits[:, i], soft_loss_kind, temperature, t2_scaling, multi_label
                    )
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
            target = aggregate_teacher_logits(teacher_logits, weights, teacher_aggregation, temperature, multi_label)
            soft = soft_loss(student_logits, target, soft_loss_kind, temperature, t2_scaling, multi_label)
        parts["loss_soft"] = soft.detach().mean()

    if labels is not None:
        per_row = 1 if problem_type == SINGLE_LABEL else num_labels
        if labels.numel() != student_logits.shape[0] * per_row:
            raise ValueError(
                f"labels hold {labels.numel()} values but the student has {student_logits.shape[0]} examples of "
                f"{num_labels} outputs in this batch ({problem_type}): give one "
                + ("label per example" if per_row == 1 else f"row of {num_labels} targets per example")
                + " (-100, or NaN for regression, where there is none)."
            )
        if multi_head:
            num_heads = student_logits.shape[1]
            head_weights = (weights if teacher_logits is not None else torch.full((num_heads,), 1.0 / num_heads)).to(
                student_logits.device
            )
            per_head = [
                hard_loss(student_logits[:, h], labels, label_smoothing, problem_type) for h in range(num_heads)
            ]
            labelled = per_head[0][1]
            hard = sum(w * loss for w, (loss, _) in zip(head_weights, per_head))
        else:
            hard, labelled = hard_loss(student_logits, labels, label_smoothing, problem_type)
        parts["loss_hard"] = hard.detach().sum() / labelled.sum().clamp_min(1)

    if soft is None:
        return hard, parts
    if hard is None:
        return soft, parts
    # Row by row: a row without a label (-100 / NaN) in a labelled batch learns from the teachers alone.
    return torch.where(labelled, alpha * soft + (1 - alpha) * hard, soft), parts
