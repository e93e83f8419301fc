"""`DistillationArguments`: the distillation knobs, beside every `TrainingArguments` field.

A `TrainingArguments` subclass (TRL's `*Config` pattern), so `HfArgumentParser`, JSON config files and
`accelerate launch` work unchanged and the distillation settings are saved with every checkpoint.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import MISSING, dataclass, field, fields

from transformers import TrainingArguments

SOFT_LOSSES = ("kl", "soft_ce", "mse")
TEACHER_AGGREGATIONS = ("mean_logits", "mean_probs")


@dataclass
class DistillationArguments(TrainingArguments):
    r"""
    Training arguments for [`MultiTeacherDistillationTrainer`].

    Every [`~transformers.TrainingArguments`] field is accepted; the fields below add distillation.

    Parameters:
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the teacher (soft) loss. The golden-label (hard) loss gets `1 - alpha`. Use `1.0` for
            unlabelled data (TMKD stage 1); `0.0` is plain fine-tuning on labels.
        temperature (`float`, *optional*, defaults to `2.0`):
            Softmax temperature applied to teacher and student logits in the `kl` and `soft_ce` losses.
        soft_loss (`str`, *optional*, defaults to `"kl"`):
            `"kl"` (KL divergence teacher‖student), `"soft_ce"` (cross-entropy against the teacher
            distribution) or `"mse"` (mean squared error between logits). Regression tasks always use MSE.
        t2_scaling (`bool`, *optional*, defaults to `True`):
            Multiply the `kl`/`soft_ce` loss by `temperature**2` so its gradients keep their scale when the
            temperature changes (Hinton et al., 2015). Ignored by `mse`.
        teacher_weights (`list[float]`, *optional*):
            One non-negative weight per teacher, normalised to sum to 1. Weights the per-teacher losses and, for a
            [`MultiHeadStudent`], how its heads are combined at inference. Default: equal weights.
        teacher_aggregation (`str`, *optional*, defaults to `"mean_logits"`):
            How a single-head student sees several teachers: `"mean_logits"` (weighted mean of logits) or
            `"mean_probs"` (weighted mean of the tempered probabilities).
    """

    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the teacher (soft) loss; the golden-label loss gets 1 - alpha. 1.0 = no labels."},
    )
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature for the 'kl' and 'soft_ce' soft losses."}
    )
    soft_loss: str = field(
        default="kl",
        metadata={"help": "Soft loss: 'kl', 'soft_ce' or 'mse' (on logits).", "choices": list(SOFT_LOSSES)},
    )
    t2_scaling: bool = field(
        default=True, metadata={"help": "Scale the kl/soft_ce loss by temperature**2 (ignored by mse)."}
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One non-negative weight per teacher (normalised); weights losses and head combination."},
    )
    teacher_aggregation: str = field(
        default="mean_logits",
        metadata={
            "help": "How a single-head student combines teachers: 'mean_logits' or 'mean_probs'.",
            "choices": list(TEACHER_AGGREGATIONS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self._check_distillation_fields()

    def _check_distillation_fields(self) -> None:
        """Range checks of the distillation fields (also run on arguments upgraded by `upgrade_arguments`)."""
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(
                f"alpha must be in [0, 1] (weight of the teacher loss; labels get 1 - alpha), got {self.alpha!r}."
            )
        if (
            not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature))
            or self.temperature <= 0
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}.")
        if self.soft_loss not in SOFT_LOSSES:
            raise ValueError(f"soft_loss must be one of {SOFT_LOSSES}, got {self.soft_loss!r}.")
        if self.teacher_aggregation not in TEACHER_AGGREGATIONS:
            raise ValueError(
                f"teacher_aggregation must be one of {TEACHER_AGGREGATIONS}, got {self.teacher_aggregation!r}."
            )
        if self.teacher_weights is not None:
            given = self.teacher_weights
            try:
                if isinstance(given, str):  # "0.5,0.3,0.2" from a config or env var
                    given = [w for w in given.split(",") if w.strip()]
                self.teacher_weights = [float(w) for w in given]
            except (TypeError, ValueError):
                raise ValueError(
                    f"teacher_weights (--teacher_weights) must be numbers, one per teacher, e.g. 0.5 0.3 0.2 or "
                    f"'0.5,0.3,0.2'; got {self.teacher_weights!r}."
                ) from None
            if len(self.teacher_weights) == 0:
                raise ValueError("teacher_weights is empty: give one weight per teacher, or leave it unset.")
            bad = [w for w in self.teacher_weights if not math.isfinite(w) or w < 0]
            if bad:
                raise ValueError(f"teacher_weights must be finite and >= 0, got {self.teacher_weights}.")
            if sum(self.teacher_weights) <= 0:
                raise ValueError(f"teacher_weights must not all be zero, got {self.teacher_weights}.")

    def __getstate__(self):
        """A pickled copy never carries a token: `Trainer` writes the arguments to `training_args.bin` in every
        checkpoint and final save, and `hub_strategy` pushes those files with the model. The live object keeps its
        token (the push itself uses it)."""
        state = self.__dict__.copy()
        for key in state:
            if key.endswith("_token") and state[key] is not None:
                state[key] = None
        return state

    def __deepcopy__(self, memo):
        """A deep copy (not a pickle) is still this run's arguments: it keeps the token."""
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return clone

    def normalized_teacher_weights(self, num_teachers: int) -> list[float]:
        """The teacher weights for `num_teachers` teachers, summing to 1; a clear error on a length mismatch."""
        if self.teacher_weights is None:
            return [1.0 / num_teachers] * num_teachers
        if len(self.teacher_weights) != num_teachers:
            raise ValueError(
                f"teacher_weights has {len(self.teacher_weights)} values but there are {num_teachers} teachers "
                f"(teacher_weights={self.teacher_weights}). Give exactly one weight per teacher, in teacher order."
            )
        total = sum(self.teacher_weights)
        return [w / total for w in self.teacher_weights]


# The fields `DistillationArguments` adds to `TrainingArguments`: the model card shows them in its distillation section
# (`StudentCardData.from_trainer`), not among the other non-default hyperparameters (`non_default_hyperparameters`).
DISTILLATION_FIELDS = tuple(
    f.name for f in fields(DistillationArguments) if f.name not in {g.name for g in fields(TrainingArguments)}
)


def upgrade_arguments(args: TrainingArguments, args_class: type[DistillationArguments]) -> DistillationArguments:
    """Give a script's own `TrainingArguments` (plain or a subclass of its own) the fields of `args_class`, in place.

    Why in place and not a copy: `Trainer` keeps the object it is given, so a script may change `trainer.args` (or its
    own `args`) after construction, and its own subclass keeps its extra fields and methods. Fields the object lacks
    take `args_class`'s defaults; the values it has are kept. Its class becomes `args_class` when it was a base of it
    (plain `TrainingArguments`), else a subclass of both (`isinstance` of each holds; same name), created once per
    pair and pickled by reference to the two classes, as `Trainer` saves the arguments in every checkpoint.
    """
    if isinstance(args, args_class):
        return args
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be TrainingArguments (or a subclass), got {type(args).__name__}.")
    own_class = type(args)
    upgraded = args_class if issubclass(args_class, own_class) else _combined_arguments_class(own_class, args_class)
    state = vars(args)
    for f in fields(args_class):
        if f.name in state:
            continue
        if f.default is not MISSING:
            state[f.name] = f.default
        elif f.default_factory is not MISSING:
            state[f.name] = f.default_factory()
        else:
            raise TypeError(f"{args_class.__name__}.{f.name} has no default to give {own_class.__name__} arguments.")
    args.__class__ = upgraded
    args._check_distillation_fields()
    return args


@functools.cache
def _combined_arguments_class(own_class: type, args_class: type) -> type:
    """The dataclass `own_class` + `args_class`: what `upgrade_arguments` turns a script's subclass into."""
    namespace = {
        "__module__": own_class.__module__,
        "__qualname__": own_class.__qualname__,
        "__doc__": own_class.__doc__,
        "__reduce__": _reduce_combined_arguments,
        "_combined_from": (own_class, args_class),
    }
    return dataclass(type(own_class.__name__, (own_class, args_class), namespace))


def _reduce_combined_arguments(self):
    """Pickle by the two classes (the combined one has no importable name); the state is `__getstate__`'s."""
    return _restore_combined_arguments, (*type(self)._combined_from, self.__getstate__())


def _restore_combined_arguments(own_class: type, args_class: type, state: dict):
    args = object.__new__(_combined_arguments_class(own_class, args_class))
    args.__dict__.update(state)
    return args
