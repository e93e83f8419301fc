"""Unit tests for DistillationArguments: defaults, validation, weights, CLI/JSON parsing and serialisation."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import pytest
from transformers import HfArgumentParser, TrainingArguments

from tmkd_hf import DistillationArguments
from tmkd_hf.arguments import SOFT_LOSSES, TEACHER_AGGREGATIONS

DISTILLATION_FIELDS = ("alpha", "temperature", "soft_loss", "t2_scaling", "teacher_weights", "teacher_aggregation")


def make_args(tmp_path, **kwargs) -> DistillationArguments:
    return DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, **kwargs)


def distillation_values(args: DistillationArguments) -> dict:
    return {name: getattr(args, name) for name in DISTILLATION_FIELDS}


# ----- defaults and type -----


def test_defaults(tmp_path):
    args = make_args(tmp_path)
    assert distillation_values(args) == {
        "alpha": 0.5,
        "temperature": 2.0,
        "soft_loss": "kl",
        "t2_scaling": True,
        "teacher_weights": None,
        "teacher_aggregation": "mean_logits",
    }
    assert SOFT_LOSSES == ("kl", "soft_ce", "mse")
    assert TEACHER_AGGREGATIONS == ("mean_logits", "mean_probs")


def test_is_training_arguments_subclass_and_keeps_training_fields(tmp_path):
    assert issubclass(DistillationArguments, TrainingArguments)
    args = make_args(tmp_path, learning_rate=3e-4, per_device_train_batch_size=4, alpha=0.8)
    assert isinstance(args, TrainingArguments)
    assert args.learning_rate == 3e-4
    assert args.per_device_train_batch_size == 4
    assert args.output_dir == str(tmp_path / "out")
    field_names = {f.name for f in dataclasses.fields(DistillationArguments)}
    assert set(DISTILLATION_FIELDS) <= field_names
    assert {f.name for f in dataclasses.fields(TrainingArguments)} <= field_names


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"alpha": 1},
        {"temperature": 0.01},
        {"temperature": 20},
        {"soft_loss": "soft_ce", "t2_scaling": False},
        {"soft_loss": "mse"},
        {"teacher_aggregation": "mean_probs"},
        {"teacher_weights": [0.0, 1.0]},
    ],
)
def test_valid_values_are_accepted(tmp_path, kwargs):
    args = make_args(tmp_path, **kwargs)
    for name, value in kwargs.items():
        if name == "teacher_weights":
            assert args.teacher_weights == [float(v) for v in value]
        else:
            assert getattr(args, name) == value


# ----- validation: ValueError with a message that names the problem -----


@pytest.mark.parametrize("alpha", [-0.1, 1.5, 2, float("nan"), float("inf"), "0.5"])
def test_alpha_outside_unit_interval(tmp_path, alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        make_args(tmp_path, alpha=alpha)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_temperature_must_be_finite_positive(tmp_path, temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        make_args(tmp_path, temperature=temperature)


def test_unknown_soft_loss(tmp_path):
    with pytest.raises(ValueError, match=r"soft_loss must be one of \('kl', 'soft_ce', 'mse'\), got 'js'"):
        make_args(tmp_path, soft_loss="js")


def test_unknown_teacher_aggregation(tmp_path):
    with pytest.raises(ValueError, match="teacher_aggregation must be one of .*got 'median'"):
        make_args(tmp_path, teacher_aggregation="median")


def test_negative_teacher_weight(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights must be finite and >= 0"):
        make_args(tmp_path, teacher_weights=[0.5, -0.1, 0.6])


def test_all_zero_teacher_weights(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights must not all be zero"):
        make_args(tmp_path, teacher_weights=[0.0, 0.0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_teacher_weight(tmp_path, bad):
    with pytest.raises(ValueError, match="teacher_weights must be finite"):
        make_args(tmp_path, teacher_weights=[1.0, bad])


def test_empty_teacher_weights(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights is empty"):
        make_args(tmp_path, teacher_weights=[])


def test_validation_is_value_error_not_assert(tmp_path):
    # Works with python -O too: a ValueError, never an AssertionError.
    with pytest.raises(ValueError) as info:
        make_args(tmp_path, alpha=3.0)
    assert type(info.value) is ValueError
    assert "3.0" in str(info.value)


# ----- teacher weights -----


def test_teacher_weights_from_comma_separated_string(tmp_path):
    args = make_args(tmp_path, teacher_weights="0.5, 0.3,0.2")
    assert args.teacher_weights == [0.5, 0.3, 0.2]


def test_teacher_weights_ints_become_floats(tmp_path):
    args = make_args(tmp_path, teacher_weights=[1, 3])
    assert args.teacher_weights == [1.0, 3.0]
    assert all(isinstance(w, float) for w in args.teacher_weights)


def test_normalized_teacher_weights_sum_to_one(tmp_path):
    args = make_args(tmp_path, teacher_weights=[1, 2, 3, 2])
    weights = args.normalized_teacher_weights(4)
    assert weights == pytest.approx([0.125, 0.25, 0.375, 0.25])
    assert math.fsum(weights) == pytest.approx(1.0)
    assert args.teacher_weights == [1.0, 2.0, 3.0, 2.0]  # the stored weights are left as given


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_normalized_teacher_weights_default_uniform(tmp_path, n):
    weights = make_args(tmp_path).normalized_teacher_weights(n)
    assert len(weights) == n
    assert weights == pytest.approx([1.0 / n] * n)
    assert math.fsum(weights) == pytest.approx(1.0)


def test_normalized_teacher_weights_length_mismatch(tmp_path):
    args = make_args(tmp_path, teacher_weights=[0.2, 0.8])
    with pytest.raises(
        ValueError, match="teacher_weights has 2 values but there are 3 teachers.*one weight per teacher"
    ):
        args.normalized_teacher_weights(3)


# ----- CLI and JSON parsing -----


def test_parse_cli_with_hf_argument_parser(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path / "x"),
            "--alpha",
            "0.7",
            "--temperature",
            "4",
            "--teacher_weights",
            "1",
            "2",
            "3",
            "--soft_loss",
            "mse",
            "--teacher_aggregation",
            "mean_probs",
            "--no_t2_scaling",
            "--learning_rate",
            "1e-4",
            "--report_to",
            "none",
            "--use_cpu",
        ]
    )
    assert isinstance(args, DistillationArguments)
    assert args.alpha == 0.7
    assert args.temperature == 4.0
    assert args.teacher_weights == [1.0, 2.0, 3.0]
    assert args.normalized_teacher_weights(3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert args.soft_loss == "mse"
    assert args.teacher_aggregation == "mean_probs"
    assert args.t2_scaling is False
    assert args.learning_rate == 1e-4


def test_parse_cli_defaults_and_bool_spellings(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    base = ["--output_dir", str(tmp_path / "x"), "--report_to", "none", "--use_cpu"]
    (args,) = parser.parse_args_into_dataclasses(base)
    assert distillation_values(args) == distillation_values(make_args(tmp_path))
    (args,) = parser.parse_args_into_dataclasses(base + ["--t2_scaling", "false"])
    assert args.t2_scaling is False
    (args,) = parser.parse_args_into_dataclasses(base + ["--t2_scaling"])
    assert args.t2_scaling is True


def test_parse_cli_rejects_unknown_choice(tmp_path, capsys):
    parser = HfArgumentParser(DistillationArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path / "x"), "--soft_loss", "js"])
    assert "invalid choice: 'js'" in capsys.readouterr().err


def test_parse_cli_validation_runs(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        parser.parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path / "x"), "--alpha", "1.5", "--report_to", "none", "--use_cpu"]
        )


def test_parse_json_file(tmp_path):
    config = {
        "output_dir": str(tmp_path / "out"),
        "alpha": 1.0,
        "temperature": 3.0,
        "soft_loss": "soft_ce",
        "t2_scaling": False,
        "teacher_weights": [0.5, 0.25, 0.25],
        "teacher_aggregation": "mean_probs",
        "num_train_epochs": 2,
        "report_to": "none",
        "use_cpu": True,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    (args,) = HfArgumentParser(DistillationArguments).parse_json_file(str(path))
    assert isinstance(args, DistillationArguments)
    assert distillation_values(args) == {name: config[name] for name in DISTILLATION_FIELDS}
    assert args.num_train_epochs == 2


def test_parse_json_file_validation_runs(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path), "teacher_weights": [0, 0], "report_to": "none"}))
    with pytest.raises(ValueError, match="must not all be zero"):
        HfArgumentParser(DistillationArguments).parse_json_file(str(path))


# ----- serialisation -----


def test_to_dict_and_json_roundtrip(tmp_path):
    args = make_args(
        tmp_path,
        alpha=0.3,
        temperature=3.5,
        soft_loss="soft_ce",
        t2_scaling=False,
        teacher_weights=[1, 3],
        teacher_aggregation="mean_probs",
    )
    as_dict = args.to_dict()
    assert {name: as_dict[name] for name in DISTILLATION_FIELDS} == distillation_values(args)
    restored = DistillationArguments(**json.loads(args.to_json_string()))
    assert distillation_values(restored) == distillation_values(args)
    assert distillation_values(restored) == {
        "alpha": 0.3,
        "temperature": 3.5,
        "soft_loss": "soft_ce",
        "t2_scaling": False,
        "teacher_weights": [1.0, 3.0],
        "teacher_aggregation": "mean_probs",
    }
    assert restored.output_dir == args.output_dir


def test_pickle_roundtrip(tmp_path):
    # Trainer saves args with torch.save (pickle) as training_args.bin in every checkpoint.
    args = make_args(tmp_path, alpha=0.9, teacher_weights=[2, 1])
    restored = pickle.loads(pickle.dumps(args))
    assert isinstance(restored, DistillationArguments)
    assert distillation_values(restored) == distillation_values(args)


def test_pickled_arguments_carry_no_token_but_the_live_and_copied_ones_do(tmp_path):
    import copy
    import pickle

    args = DistillationArguments(output_dir=str(tmp_path), hub_token="hf_secret_sentinel", alpha=0.3, use_cpu=True)
    restored = pickle.loads(pickle.dumps(args))
    assert restored.hub_token is None and restored.alpha == 0.3 and restored.output_dir == str(tmp_path)
    assert b"hf_secret_sentinel" not in pickle.dumps(args)
    assert args.hub_token == "hf_secret_sentinel"  # the run itself still pushes with it
    assert copy.deepcopy(args).hub_token == "hf_secret_sentinel" and copy.deepcopy(args).alpha == 0.3


@pytest.mark.parametrize("weights", ["0.5,abc", ["x", 1.0], "0.5;0.5"])
def test_unparsable_teacher_weights_name_the_flag(tmp_path, weights):
    with pytest.raises(ValueError, match=r"teacher_weights \(--teacher_weights\) must be numbers"):
        DistillationArguments(output_dir=str(tmp_path), teacher_weights=weights, use_cpu=True)
