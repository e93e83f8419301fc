"""Unit tests for tmkd_hf.losses, checked against values computed by hand with `math` (no torch reference)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tmkd_hf.losses import (
    IGNORE_INDEX,
    aggregate_teacher_logits,
    hard_loss,
    kl_divergence_loss,
    mse_logits_loss,
    multi_teacher_distillation_loss,
    soft_cross_entropy_loss,
    soft_loss,
)

# ----- hand-written reference maths (plain Python floats) -----


def softmax(xs: list[float], temperature: float = 1.0) -> list[float]:
    m = max(x / temperature for x in xs)
    exps = [math.exp(x / temperature - m) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def kl(teacher: list[float], student: list[float], temperature: float = 1.0, t2: bool = True) -> float:
    """KL(p_teacher || p_student) of the tempered distributions."""
    p = softmax(teacher, temperature)
    q = softmax(student, temperature)
    value = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return value * temperature**2 if t2 else value


def entropy(logits: list[float], temperature: float = 1.0) -> float:
    return -sum(p * math.log(p) for p in softmax(logits, temperature))


def soft_ce(teacher: list[float], student: list[float], temperature: float = 1.0, t2: bool = True) -> float:
    p = softmax(teacher, temperature)
    q = softmax(student, temperature)
    value = -sum(pi * math.log(qi) for pi, qi in zip(p, q))
    return value * temperature**2 if t2 else value


def mse(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def cross_entropy(logits: list[float], label: int) -> float:
    return -math.log(softmax(logits)[label])


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float32)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.float(), expected, atol=atol, rtol=1e-5)


STUDENT = [[1.0, 2.0, 3.0], [0.0, 0.5, -0.5]]
TEACHER = [[3.0, 1.0, 0.0], [1.0, -1.0, 2.0]]


# ----- kl_divergence_loss -----


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kl_matches_hand_computation_with_t2_scaling(temperature):
    out = kl_divergence_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=temperature)
    expected = [kl(t, s, temperature) for t, s in zip(TEACHER, STUDENT)]
    assert_close(out, expected)
    assert out.shape == (2,)


def test_kl_without_t2_scaling_is_scaled_version():
    t = 3.0
    scaled = kl_divergence_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=t, t2_scaling=True)
    plain = kl_divergence_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=t, t2_scaling=False)
    assert_close(plain, [kl(te, s, t, t2=False) for te, s in zip(TEACHER, STUDENT)])
    assert_close(scaled, plain * t**2)
    assert not torch.allclose(scaled, plain)


def test_kl_first_row_exact_value():
    # Written out fully for one row: p = softmax([3, 1, 0]), q = softmax([1, 2, 3]) at T = 1.
    zp = math.exp(3) + math.exp(1) + math.exp(0)
    zq = math.exp(1) + math.exp(2) + math.exp(3)
    p = [math.exp(3) / zp, math.exp(1) / zp, math.exp(0) / zp]
    q = [math.exp(1) / zq, math.exp(2) / zq, math.exp(3) / zq]
    expected = p[0] * math.log(p[0] / q[0]) + p[1] * math.log(p[1] / q[1]) + p[2] * math.log(p[2] / q[2])
    out = kl_divergence_loss(torch.tensor([STUDENT[0]]), torch.tensor([TEACHER[0]]), temperature=1.0)
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_kl_temperature_softens_distributions():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    unscaled = [kl_divergence_loss(student, teacher, temperature=t, t2_scaling=False) for t in (1.0, 2.0, 8.0, 100.0)]
    # Higher temperature -> flatter distributions -> smaller divergence, tending to 0.
    for lower_t, higher_t in itertools.pairwise(unscaled):
        assert torch.all(higher_t < lower_t)
    assert torch.all(unscaled[-1] < 1e-3)
    # T=1 does not depend on t2_scaling.
    assert_close(kl_divergence_loss(student, teacher, 1.0, True), kl_divergence_loss(student, teacher, 1.0, False))


def test_kl_zero_when_student_equals_teacher_and_shift_invariant():
    logits = torch.tensor(TEACHER)
    assert_close(kl_divergence_loss(logits, logits.clone(), temperature=2.0), [0.0, 0.0])
    # softmax ignores a constant shift per row, so KL is still 0.
    shifted = logits + torch.tensor([[5.0], [-3.0]])
    assert_close(kl_divergence_loss(shifted, logits, temperature=1.5), [0.0, 0.0])
    # And it is strictly positive otherwise.
    assert torch.all(kl_divergence_loss(torch.tensor(STUDENT), logits) > 0)


def test_kl_half_precision_inputs_computed_in_float32():
    out = kl_divergence_loss(torch.tensor(STUDENT).bfloat16(), torch.tensor(TEACHER).bfloat16(), temperature=2.0)
    assert out.dtype == torch.float32
    bf = torch.tensor(STUDENT).bfloat16().float().tolist(), torch.tensor(TEACHER).bfloat16().float().tolist()
    assert_close(out, [kl(t, s, 2.0) for t, s in zip(bf[1], bf[0])])


# ----- soft_cross_entropy_loss -----


@pytest.mark.parametrize("t2_scaling", [True, False])
def test_soft_ce_matches_hand_and_equals_kl_plus_teacher_entropy(t2_scaling):
    t = 2.0
    out = soft_cross_entropy_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=t, t2_scaling=t2_scaling)
    assert_close(out, [soft_ce(te, s, t, t2_scaling) for te, s in zip(TEACHER, STUDENT)])
    scale = t**2 if t2_scaling else 1.0
    expected = [kl(te, s, t, t2_scaling) + scale * entropy(te, t) for te, s in zip(TEACHER, STUDENT)]
    assert_close(out, expected)
    # Not the same value as KL: the teacher entropy is strictly positive here.
    assert torch.all(out > kl_divergence_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), t, t2_scaling) + 0.1)


def test_soft_ce_equal_logits_gives_teacher_entropy():
    logits = torch.tensor(TEACHER)
    out = soft_cross_entropy_loss(logits, logits, temperature=1.0)
    assert_close(out, [entropy(row) for row in TEACHER])


def test_soft_ce_and_kl_have_same_gradient_wrt_student():
    teacher = torch.tensor(TEACHER)
    s1 = torch.tensor(STUDENT, requires_grad=True)
    s2 = torch.tensor(STUDENT, requires_grad=True)
    kl_divergence_loss(s1, teacher, temperature=2.5).sum().backward()
    soft_cross_entropy_loss(s2, teacher, temperature=2.5).sum().backward()
    assert s1.grad is not None and s1.grad.abs().sum() > 0
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-6, rtol=1e-5)
    # Analytic gradient of T^2 * KL wrt student logits: T * (q - p).
    expected = [
        [2.5 * (qi - pi) for qi, pi in zip(softmax(s, 2.5), softmax(te, 2.5))] for s, te in zip(STUDENT, TEACHER)
    ]
    assert_close(s1.grad, expected)


# ----- mse_logits_loss -----


def test_mse_logits_matches_hand():
    out = mse_logits_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    # Row 0: (1-3)^2 + (2-1)^2 + (3-0)^2 = 4 + 1 + 9 = 14 -> 14/3. Row 1: 1 + 2.25 + 6.25 = 9.5 -> 9.5/3.
    assert_close(out, [14 / 3, 9.5 / 3])
    assert_close(out, [mse(s, t) for s, t in zip(STUDENT, TEACHER)])
    assert_close(mse_logits_loss(torch.tensor(TEACHER), torch.tensor(TEACHER)), [0.0, 0.0])


def test_soft_loss_dispatch_and_unknown_kind():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert_close(soft_loss(s, t, "kl", 2.0, True), kl_divergence_loss(s, t, 2.0, True))
    assert_close(soft_loss(s, t, "soft_ce", 2.0, False), soft_cross_entropy_loss(s, t, 2.0, False))
    # mse ignores temperature and T^2 scaling.
    assert_close(soft_loss(s, t, "mse", 5.0, True), [14 / 3, 9.5 / 3])
    with pytest.raises(ValueError, match="Unknown soft loss 'js'"):
        soft_loss(s, t, "js")


# ----- hard_loss -----


def test_hard_loss_cross_entropy_with_ignore_index():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, IGNORE_INDEX, 2])
    loss, mask = hard_loss(logits, labels)
    assert IGNORE_INDEX == -100
    assert mask.tolist() == [True, False, True]
    expected0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-1)))
    expected2 = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    assert_close(loss, [expected0, 0.0, expected2])


def test_hard_loss_all_labels_present_and_float_label_dtype():
    logits = torch.tensor([[0.3, -0.2], [1.5, 0.1]])
    loss, mask = hard_loss(logits, torch.tensor([1.0, 0.0]))  # float labels are cast to class ids
    assert mask.all()
    assert_close(loss, [cross_entropy([0.3, -0.2], 1), cross_entropy([1.5, 0.1], 0)])


def test_hard_loss_regression_squared_error_nan_means_no_label():
    logits = torch.tensor([[1.5], [0.0], [2.0]])
    labels = torch.tensor([1.0, float("nan"), 4.0])
    loss, mask = hard_loss(logits, labels)
    assert mask.tolist() == [True, False, True]
    assert_close(loss, [0.25, 0.0, 4.0])
    assert torch.isfinite(loss).all()


def test_hard_loss_regression_gradient_is_finite_with_nan_label():
    logits = torch.tensor([[1.5], [0.0]], requires_grad=True)
    loss, _ = hard_loss(logits, torch.tensor([1.0, float("nan")]))
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert_close(logits.grad, [[1.0], [0.0]])  # d/dx (x - 1)^2 = 2 * 0.5


# ----- aggregate_teacher_logits -----

TEACHERS_3 = [  # [B=2, N=3, C=3]
    [[1.0, 2.0, 0.0], [3.0, -1.0, 0.5], [0.0, 0.0, 4.0]],
    [[-2.0, 1.0, 1.0], [0.5, 0.5, 0.0], [2.0, -1.0, -3.0]],
]
WEIGHTS_3 = [0.2, 0.3, 0.5]


def test_aggregate_mean_logits_weighted():
    out = aggregate_teacher_logits(torch.tensor(TEACHERS_3), torch.tensor(WEIGHTS_3), "mean_logits")
    expected = [[sum(w * row[c] for w, row in zip(WEIGHTS_3, example)) for c in range(3)] for example in TEACHERS_3]
    assert_close(out, expected)
    # First entry spelled out: 0.2*1 + 0.3*3 + 0.5*0 = 1.1
    assert out[0, 0].item() == pytest.approx(1.1, rel=1e-6)


def test_aggregate_mean_logits_default_mode_and_uniform_weights():
    out = aggregate_teacher_logits(torch.tensor(TEACHERS_3), torch.full((3,), 1 / 3))
    expected = [[sum(row[c] for row in example) / 3 for c in range(3)] for example in TEACHERS_3]
    assert_close(out, expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_aggregate_mean_probs_softmax_equals_weighted_mean_of_teacher_probs(temperature):
    out = aggregate_teacher_logits(torch.tensor(TEACHERS_3), torch.tensor(WEIGHTS_3), "mean_probs", temperature)
    assert out.shape == (2, 3)
    for b, example in enumerate(TEACHERS_3):
        probs = [softmax(row, temperature) for row in example]
        mean_probs = [sum(w * p[c] for w, p in zip(WEIGHTS_3, probs)) for c in range(3)]
        # The returned logits are T * log(mean_probs) exactly...
        assert_close(out[b], [temperature * math.log(p) for p in mean_probs])
        # ...so their tempered softmax is the averaged distribution.
        assert_close(torch.softmax(out[b] / temperature, dim=-1), mean_probs)
    # and it differs from averaging logits
    mean_logits = aggregate_teacher_logits(torch.tensor(TEACHERS_3), torch.tensor(WEIGHTS_3), "mean_logits")
    assert not torch.allclose(torch.softmax(out, -1), torch.softmax(mean_logits, -1), atol=1e-3)


def test_aggregate_single_teacher_is_identity_for_mean_logits():
    t = torch.tensor([[[0.3, -1.2]], [[2.0, 1.0]]])
    assert_close(aggregate_teacher_logits(t, torch.tensor([1.0]), "mean_logits"), t[:, 0])


def test_aggregate_unknown_mode():
    with pytest.raises(ValueError, match="Unknown teacher_aggregation 'median'"):
        aggregate_teacher_logits(torch.tensor(TEACHERS_3), torch.tensor(WEIGHTS_3), "median")


# ----- multi_teacher_distillation_loss -----

# Multi-head student [B=2, H=2, C=3] and teachers [B=2, N=2, C=3].
MH_STUDENT = [
    [[0.5, -0.5, 1.0], [2.0, 0.0, -1.0]],
    [[-1.0, 1.0, 0.0], [0.2, 0.3, 0.1]],
]
MH_TEACHER = [
    [[1.0, 0.0, 2.0], [3.0, -1.0, 0.0]],
    [[0.0, 2.0, -1.0], [-0.5, 1.5, 0.5]],
]
MH_LABELS = [2, 1]


def hand_multi_head(alpha, temperature, weights, kind="kl", t2=True, labels=MH_LABELS):
    soft_fn = {"kl": kl, "soft_ce": soft_ce}.get(kind)
    soft, hard, per_teacher = [], [], [[], []]
    for b in range(2):
        s_terms = []
        for i in range(2):
            if kind == "mse":
                v = mse(MH_STUDENT[b][i], MH_TEACHER[b][i])
            else:
                v = soft_fn(MH_TEACHER[b][i], MH_STUDENT[b][i], temperature, t2)
            s_terms.append(v)
            per_teacher[i].append(v)
        soft.append(sum(w * v for w, v in zip(weights, s_terms)))
        if labels is not None:
            hard.append(sum(w * cross_entropy(MH_STUDENT[b][h], labels[b]) for h, w in enumerate(weights)))
    total = [alpha * s + (1 - alpha) * h for s, h in zip(soft, hard)] if labels is not None else soft
    return total, soft, hard, per_teacher


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_multi_head_alpha_mixing_by_hand(kind):
    alpha, t, w = 0.3, 2.0, [0.25, 0.75]
    loss, parts = multi_teacher_distillation_loss(
        torch.tensor(MH_STUDENT),
        torch.tensor(MH_TEACHER),
        torch.tensor(MH_LABELS),
        alpha=alpha,
        temperature=t,
        soft_loss_kind=kind,
        teacher_weights=torch.tensor(w),
    )
    total, soft, hard, per_teacher = hand_multi_head(alpha, t, w, kind)
    assert_close(loss, total)
    assert_close(loss, [alpha * s + (1 - alpha) * h for s, h in zip(soft, hard)])
    assert set(parts) == {"loss_soft", "loss_hard", "loss_soft_teacher_0", "loss_soft_teacher_1"}
    assert parts["loss_soft"].item() == pytest.approx(sum(soft) / 2, rel=1e-5)
    assert parts["loss_hard"].item() == pytest.approx(sum(hard) / 2, rel=1e-5)
    for i in range(2):
        assert parts[f"loss_soft_teacher_{i}"].item() == pytest.approx(sum(per_teacher[i]) / 2, rel=1e-5)
        assert not parts[f"loss_soft_teacher_{i}"].requires_grad


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.5])
def test_multi_head_alpha_extremes(alpha):
    w = [0.5, 0.5]
    loss, _ = multi_teacher_distillation_loss(
        torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), torch.tensor(MH_LABELS), alpha=alpha, temperature=1.0
    )
    total, soft, hard, _ = hand_multi_head(alpha, 1.0, w)
    assert_close(loss, total)
    if alpha == 1.0:
        assert_close(loss, soft)
    if alpha == 0.0:
        assert_close(loss, hard)


def test_multi_head_t2_scaling_off():
    loss, _ = multi_teacher_distillation_loss(
        torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), None, temperature=3.0, t2_scaling=False
    )
    total, *_ = hand_multi_head(1.0, 3.0, [0.5, 0.5], t2=False, labels=None)
    assert_close(loss, total)


def test_only_soft_when_labels_none():
    loss, parts = multi_teacher_distillation_loss(
        torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), None, alpha=0.3, temperature=2.0
    )
    _, soft, _, _ = hand_multi_head(0.3, 2.0, [0.5, 0.5], labels=None)
    assert_close(loss, soft)  # not scaled by alpha
    assert "loss_hard" not in parts
    assert parts["loss_soft"].item() == pytest.approx(sum(soft) / 2, rel=1e-5)


def test_only_hard_when_teacher_logits_none_multi_head():
    loss, parts = multi_teacher_distillation_loss(torch.tensor(MH_STUDENT), None, torch.tensor(MH_LABELS), alpha=0.3)
    expected = [sum(0.5 * cross_entropy(MH_STUDENT[b][h], MH_LABELS[b]) for h in range(2)) for b in range(2)]
    assert_close(loss, expected)  # not scaled by 1 - alpha; heads weighted uniformly
    assert set(parts) == {"loss_hard"}


def test_only_hard_when_teacher_logits_none_single_head():
    student = [[0.1, 0.9], [2.0, -1.0], [0.0, 0.0]]
    labels = [1, IGNORE_INDEX, 0]
    loss, parts = multi_teacher_distillation_loss(torch.tensor(student), None, torch.tensor(labels), alpha=0.9)
    expected = [cross_entropy(student[0], 1), 0.0, cross_entropy(student[2], 0)]
    assert_close(loss, expected)
    # loss_hard averages over labelled rows only.
    assert parts["loss_hard"].item() == pytest.approx((expected[0] + expected[2]) / 2, rel=1e-5)


def test_teacher_weights_select_teachers():
    student, teacher, labels = torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), torch.tensor(MH_LABELS)
    loss_first, parts = multi_teacher_distillation_loss(
        student, teacher, None, temperature=2.0, teacher_weights=torch.tensor([1.0, 0.0])
    )
    loss_second, _ = multi_teacher_distillation_loss(
        student, teacher, None, temperature=2.0, teacher_weights=torch.tensor([0.0, 1.0])
    )
    assert_close(loss_first, [kl(MH_TEACHER[b][0], MH_STUDENT[b][0], 2.0) for b in range(2)])
    assert_close(loss_second, [kl(MH_TEACHER[b][1], MH_STUDENT[b][1], 2.0) for b in range(2)])
    # per-teacher parts do not depend on the weights
    assert parts["loss_soft_teacher_1"].item() == pytest.approx(loss_second.mean().item(), rel=1e-5)
    # Weights also weight the per-head hard losses.
    loss_hard_first, _ = multi_teacher_distillation_loss(
        student, teacher, labels, alpha=0.0, teacher_weights=torch.tensor([1.0, 0.0])
    )
    assert_close(loss_hard_first, [cross_entropy(MH_STUDENT[b][0], MH_LABELS[b]) for b in range(2)])


def test_teacher_weights_default_to_uniform():
    student, teacher = torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER)
    default, _ = multi_teacher_distillation_loss(student, teacher, None, temperature=2.0)
    uniform, _ = multi_teacher_distillation_loss(
        student, teacher, None, temperature=2.0, teacher_weights=torch.tensor([0.5, 0.5])
    )
    skewed, _ = multi_teacher_distillation_loss(
        student, teacher, None, temperature=2.0, teacher_weights=torch.tensor([0.9, 0.1])
    )
    assert_close(default, uniform)
    assert not torch.allclose(default, skewed)


def test_single_head_student_learns_from_aggregated_teachers():
    student = [[0.5, 1.0, -0.5], [1.0, 0.0, 0.0]]
    labels = [0, 2]
    alpha, t = 0.6, 2.0
    loss, parts = multi_teacher_distillation_loss(
        torch.tensor(student),
        torch.tensor(TEACHERS_3),
        torch.tensor(labels),
        alpha=alpha,
        temperature=t,
        teacher_weights=torch.tensor(WEIGHTS_3),
    )
    expected = []
    for b in range(2):
        target = [sum(w * row[c] for w, row in zip(WEIGHTS_3, TEACHERS_3[b])) for c in range(3)]
        expected.append(alpha * kl(target, student[b], t) + (1 - alpha) * cross_entropy(student[b], labels[b]))
    assert_close(loss, expected)
    assert set(parts) == {"loss_soft", "loss_hard"}  # no per-teacher parts for a single head


def test_single_head_mean_probs_aggregation():
    student = [[0.5, 1.0, -0.5], [1.0, 0.0, 0.0]]
    t = 1.5
    loss, _ = multi_teacher_distillation_loss(
        torch.tensor(student),
        torch.tensor(TEACHERS_3),
        None,
        temperature=t,
        teacher_weights=torch.tensor(WEIGHTS_3),
        teacher_aggregation="mean_probs",
    )
    expected = []
    for b in range(2):
        probs = [softmax(row, t) for row in TEACHERS_3[b]]
        p = [sum(w * pr[c] for w, pr in zip(WEIGHTS_3, probs)) for c in range(3)]
        q = softmax(student[b], t)
        expected.append(t**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    assert_close(loss, expected)


def test_loss_is_differentiable_wrt_student():
    student = torch.tensor(MH_STUDENT, requires_grad=True)
    loss, _ = multi_teacher_distillation_loss(student, torch.tensor(MH_TEACHER), torch.tensor(MH_LABELS))
    loss.mean().backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_unlabelled_rows_only_count_in_loss_hard_part():
    student = torch.tensor(MH_STUDENT)
    labels = torch.tensor([MH_LABELS[0], IGNORE_INDEX])
    _, parts = multi_teacher_distillation_loss(student, torch.tensor(MH_TEACHER), labels, alpha=0.5)
    hard_row0 = sum(0.5 * cross_entropy(MH_STUDENT[0][h], MH_LABELS[0]) for h in range(2))
    assert parts["loss_hard"].item() == pytest.approx(hard_row0, rel=1e-5)


# regression (C == 1)


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_regression_switches_soft_loss_to_mse_single_head(kind):
    student = [[0.5], [2.0], [-1.0]]
    teachers = [[[1.0], [2.0]], [[2.0], [4.0]], [[0.0], [0.0]]]  # mean: 1.5, 3.0, 0.0
    labels = [1.0, float("nan"), -2.0]
    alpha = 0.25
    loss, parts = multi_teacher_distillation_loss(
        torch.tensor(student),
        torch.tensor(teachers),
        torch.tensor(labels),
        alpha=alpha,
        temperature=4.0,
        soft_loss_kind=kind,
    )
    soft = [(0.5 - 1.5) ** 2, (2.0 - 3.0) ** 2, (-1.0 - 0.0) ** 2]
    hard = [(0.5 - 1.0) ** 2, 0.0, (-1.0 + 2.0) ** 2]
    # the NaN-labelled row has no golden label: it learns from the teachers alone
    assert_close(loss, [alpha * soft[0] + (1 - alpha) * hard[0], soft[1], alpha * soft[2] + (1 - alpha) * hard[2]])
    assert parts["loss_hard"].item() == pytest.approx((0.25 + 1.0) / 2, rel=1e-6)


def test_regression_multi_head():
    student = [[[0.5], [1.0]], [[2.0], [0.0]]]  # [B=2, H=2, C=1]
    teachers = [[[1.0], [3.0]], [[2.0], [1.0]]]
    labels = [1.0, 0.0]
    loss, parts = multi_teacher_distillation_loss(
        torch.tensor(student), torch.tensor(teachers), torch.tensor(labels), alpha=0.5, soft_loss_kind="kl"
    )
    soft = [0.5 * 0.25 + 0.5 * 4.0, 0.5 * 0.0 + 0.5 * 1.0]
    hard = [0.5 * 0.25 + 0.5 * 0.0, 0.5 * 4.0 + 0.5 * 0.0]
    assert_close(loss, [0.5 * s + 0.5 * h for s, h in zip(soft, hard)])
    assert parts["loss_soft_teacher_1"].item() == pytest.approx((4.0 + 1.0) / 2)


# errors


def test_error_wrong_teacher_logits_rank():
    with pytest.raises(ValueError, match=r"teacher_logits must be \[batch, num_teachers, num_labels\].*\(2, 3\)"):
        multi_teacher_distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), None)


def test_error_num_labels_mismatch():
    student = torch.zeros(2, 2, 3)
    teacher = torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match="teacher_logits have 4 labels but the student predicts 3"):
        multi_teacher_distillation_loss(student, teacher, None)
    with pytest.raises(ValueError, match="share one label set"):
        multi_teacher_distillation_loss(torch.zeros(2, 3), teacher, None)


def test_error_heads_differ_from_teachers():
    with pytest.raises(ValueError, match="student has 2 heads but teacher_logits hold 3 teachers.*num_teachers=3"):
        multi_teacher_distillation_loss(torch.zeros(2, 2, 3), torch.zeros(2, 3, 3), None)


def test_error_teacher_weights_length_mismatch():
    with pytest.raises(ValueError, match="teacher_weights has 3 values but teacher_logits hold 2 teachers"):
        multi_teacher_distillation_loss(
            torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), None, teacher_weights=torch.tensor([0.2, 0.3, 0.5])
        )
    with pytest.raises(ValueError, match="teacher_weights has 1 values but teacher_logits hold 3 teachers"):
        multi_teacher_distillation_loss(
            torch.zeros(2, 3), torch.zeros(2, 3, 3), None, teacher_weights=torch.tensor([1.0])
        )


def test_error_neither_labels_nor_teacher_logits():
    with pytest.raises(ValueError, match="neither teacher_logits nor labels"):
        multi_teacher_distillation_loss(torch.tensor(STUDENT), None, None)


def test_error_mean_probs_with_regression():
    with pytest.raises(ValueError, match="mean_probs.*regression"):
        multi_teacher_distillation_loss(torch.zeros(2, 1), torch.zeros(2, 3, 1), None, teacher_aggregation="mean_probs")


def test_error_unknown_soft_loss_kind_in_multi_teacher_loss():
    with pytest.raises(ValueError, match="Unknown soft loss 'hinge'"):
        multi_teacher_distillation_loss(
            torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), None, soft_loss_kind="hinge"
        )


def test_error_batch_size_mismatch_is_not_broadcast():
    # A [1, N, C] teacher batch must not silently broadcast over a student batch of 2.
    with pytest.raises(ValueError, match="teacher_logits hold 1 examples but the student has 2"):
        multi_teacher_distillation_loss(torch.zeros(2, 3), torch.zeros(1, 2, 3), None)
    with pytest.raises(ValueError, match="teacher_logits hold 1 examples but the student has 2"):
        multi_teacher_distillation_loss(torch.zeros(2, 2, 3), torch.zeros(1, 2, 3), None)


def test_error_labels_count_mismatch_is_not_broadcast():
    # A single regression label would otherwise broadcast silently over the batch.
    with pytest.raises(ValueError, match="labels hold 1 values but the student has 2 examples"):
        multi_teacher_distillation_loss(torch.zeros(2, 1), None, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="labels hold 3 values but the student has 2 examples"):
        multi_teacher_distillation_loss(torch.tensor(MH_STUDENT), torch.tensor(MH_TEACHER), torch.tensor([0, 1, 2]))


def test_rows_without_label_in_a_labelled_batch_learn_from_teachers_alone():
    student = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    teacher = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    labels = torch.tensor([1, -100])
    total, _ = multi_teacher_distillation_loss(student, teacher, labels, alpha=0.3, temperature=1.0)
    soft = kl_divergence_loss(student, teacher[:, 0], 1.0, True)
    hard = -torch.log_softmax(student[0], -1)[1]
    torch.testing.assert_close(total[0], 0.3 * soft[0] + 0.7 * hard)
    torch.testing.assert_close(total[1], soft[1])  # not 0.3 * soft: the row has nothing else to learn from


def test_hard_loss_label_smoothing_matches_hand():
    from tmkd_hf.losses import hard_loss

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, -100])
    loss, mask = hard_loss(logits, labels, label_smoothing=0.3)
    log_p = torch.log_softmax(logits, dim=-1)
    by_hand = [-(0.7 * log_p[i, labels[i]] + 0.3 * log_p[i].mean()) for i in range(2)]
    torch.testing.assert_close(loss[:2], torch.stack(by_hand))
    assert mask.tolist() == [True, True, False] and loss[2] == 0
