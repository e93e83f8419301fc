"""LoRA students: train the student's encoder through low-rank adapters (peft), export one plain merged model.

`apply_lora(student, LoraStudentArguments(...))` puts LoRA adapters on the encoder and keeps the classification head
fully trainable:

- a [`MultiHeadStudent`] gets the adapters injected *in place* (`peft.inject_adapter_in_model`) and becomes a
  [`LoraMultiHeadStudent`], still a `MultiHeadStudent`, so `MultiTeacherDistillationTrainer` trains it like any
  other (per-head losses, checkpoints that keep every head and resume, `save_model()` writing the merged plain
  model). Its per-teacher heads
  (`MultiHeadLinear`) and the rest of the head (BERT's pooler, RoBERTa's `classifier.dense`, ...) are trained in
  full (`requires_grad`), never adapted;
- a plain `AutoModelForSequenceClassification` student becomes a standard `PeftModelForSequenceClassification`
  (the head in `modules_to_save`), which `Trainer` already knows how to checkpoint and resume (adapter files).

The export is one plain checkpoint that loads without peft or tmkd_hf: first the LoRA update `B @ A * scaling` is
added to each adapted weight (peft's `merge` / `merge_and_unload`), then the per-teacher heads are folded into one
linear layer (`MultiHeadStudent.merge_heads`). Both steps are exact up to float rounding (`merge_student`,
`save_merged_student`).

What a training checkpoint of a LoRA `MultiHeadStudent` holds: the whole student (frozen base weights, LoRA `A`/`B`
matrices, every head) in `model.safetensors`, and in `tmkd_student.json` the LoRA settings, so
`MultiHeadStudent.from_pretrained("out/checkpoint-500")` rebuilds the same adapters and
`trainer.train(resume_from_checkpoint=...)` continues exactly (optimizer, scheduler and RNG states as in `Trainer`).

LoRA support builds on `tmkd_hf.modeling`, which knows nothing of it: `LoraMultiHeadStudent` adds the settings to
the checkpoint and the adapter merge to `merge_heads`, and registers how its checkpoints reload
(`register_checkpoint_extension`).
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import asdict, dataclass, field, fields

from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from .modeling import MultiHeadStudent, _set_submodule, find_classification_head, register_checkpoint_extension

logger = logging.get_logger(__name__)

LORA_CONFIG_KEY = "lora"  # where a LoRA student's settings are saved in tmkd_student.json

# LoRA targets per `config.model_type` (the attention query/value projections, as in the LoRA paper); model types
# not listed fall back to peft's own table (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
DEFAULT_LORA_TARGET_MODULES = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "modernbert": ["Wqkv"],
}

# Layers of the classification head *before* its final linear layer, trained in full beside the per-teacher heads.
# (When the final layer is nested, e.g. RoBERTa's `classifier.out_proj`, its parent `classifier` is added too.) BERT's
# pooler is the first half of its two-layer head, the counterpart of RoBERTa's `classifier.dense`.
DEFAULT_HEAD_MODULES = {
    "bert": ["pooler"],
    "albert": ["pooler"],
    "deberta": ["pooler"],
    "deberta-v2": ["pooler"],
    "distilbert": ["pre_classifier"],
    "modernbert": ["head"],
}


@dataclass
class LoraStudentArguments:
    r"""
    How to train the student with LoRA (`HfArgumentParser`-friendly; the names follow TRL's `ModelConfig`).

    Parameters:
        use_peft (`bool`, *optional*, defaults to `False`):
            Train the student through LoRA adapters (recipes apply [`apply_lora`] only when this is set).
        lora_r (`int`, *optional*, defaults to `8`):
            Rank of the LoRA update matrices.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator: the update is multiplied by `lora_alpha / lora_r`.
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA branch's input during training.
        lora_target_modules (`list[str]`, *optional*):
            Names (or name suffixes) of the linear layers that get adapters, or `["all-linear"]`. Default per
            architecture: the attention query/value projections (`query`/`value` for BERT, RoBERTa, ELECTRA;
            `q_lin`/`v_lin` for DistilBERT; `q`/`v` for MPNet; see `DEFAULT_LORA_TARGET_MODULES`).
        lora_modules_to_save (`list[str]`, *optional*):
            Modules trained in full besides the final (per-teacher) head layer, which always is. Default: the rest
            of the classification head (BERT's `pooler`, RoBERTa's `classifier`, DistilBERT's `pre_classifier`).
            `[]` (on the command line `--lora_modules_to_save none`) trains only the final head layer.
    """

    use_peft: bool = field(
        default=False, metadata={"help": "Train the student through LoRA adapters (peft); the head is trained in full."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha: the update is scaled by lora_alpha / lora_r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch (training only)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Layers (names or name suffixes) that get LoRA adapters, or 'all-linear'. Default per model type: "
            "the query/value projections (BERT/RoBERTa: query value; DistilBERT: q_lin v_lin; MPNet: q v)."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full besides the per-teacher heads (always trained). Default: the rest of the "
            "classification head (BERT: pooler; RoBERTa: classifier; DistilBERT: pre_classifier). 'none': heads only."
        },
    )

    def __post_init__(self):
        self.lora_target_modules = _as_name_list(self.lora_target_modules, "lora_target_modules")
        self.lora_modules_to_save = _as_name_list(self.lora_modules_to_save, "lora_modules_to_save", allow_none=True)
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise ValueError(
                "lora_target_modules is empty: name the layers that get LoRA adapters (e.g. query value), or leave "
                "it unset for the architecture's default."
            )
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 1:
            raise ValueError(f"lora_r (the LoRA rank) must be an integer >= 1, got {self.lora_r!r}.")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or self.lora_alpha <= 0:
            raise ValueError(
                f"lora_alpha must be a number > 0 (the update is scaled by alpha / r), got {self.lora_alpha!r}."
            )
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")

    def to_settings(self) -> dict:
        """The fields as a JSON-able dict (saved in a LoRA student's `tmkd_student.json`)."""
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict) -> LoraStudentArguments:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})


def _as_name_list(value, name: str, allow_none: bool = False) -> list[str] | None:
    """Accept a list, `"a,b"` (config files, env vars) or, where allowed, `"none"` / `[]` (= no modules)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    out = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
    if allow_none and [v.lower() for v in out] in ([], ["none"]):
        return []
    if any(v.lower() == "none" for v in out):
        raise ValueError(f"{name}: 'none' cannot be combined with module names, got {value}.")
    return out


# ----- applying LoRA -----


def has_lora_layers(model: nn.Module) -> bool:
    """Whether `model` holds peft adapter layers (without importing peft when it was never imported)."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def is_peft_student(model) -> bool:
    """Whether `model` is a `peft.PeftModel` (a plain student after `apply_lora`)."""
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _default_targets(model: PreTrainedModel) -> list[str]:
    model_type = getattr(model.config, "model_type", None)
    if model_type in DEFAULT_LORA_TARGET_MODULES:
        return list(DEFAULT_LORA_TARGET_MODULES[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise ValueError(
        f"No default LoRA target modules for model type {model_type!r}: pass lora_target_modules (names of the "
        "encoder's linear layers, e.g. the attention query and value projections) or 'all-linear'."
    )


def _trained_modules(model: nn.Module, head_module: str, extra: list[str] | None) -> list[str]:
    """Full names of the modules trained in full: the final head layer, its parent head module, the extras."""
    names = [head_module]
    if "." in head_module:
        names.append(head_module.rpartition(".")[0])
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    wanted = DEFAULT_HEAD_MODULES.get(model_type, []) if extra is None else extra
    all_names = [n for n, _ in model.named_modules() if n]
    for suffix in wanted:
        found = [n for n in all_names if n == suffix or n.endswith("." + suffix)]
        if not found:
            if extra is None:
                continue  # an architecture default that this model does not have (e.g. BERT without pooler)
            raise ValueError(
                f"lora_modules_to_save names {suffix!r}, but {type(model).__name__} has no such module. Module names "
                f"look like {all_names[:3]} ... {all_names[-3:]}."
            )
        names += found
    names = sorted(set(names), key=len)
    return [n for n in names if not any(n.startswith(outer + ".") for outer in names if outer != n)]


def apply_lora(student: nn.Module, args: LoraStudentArguments | None = None) -> nn.Module:
    """Give `student` LoRA adapters on its encoder; its classification head stays fully trainable.

    Args:
        student: a [`MultiHeadStudent`] (adapters injected in place; the same object is returned, now a
            [`LoraMultiHeadStudent`]) or a plain `AutoModelForSequenceClassification` model (returned wrapped as a
            `peft.PeftModelForSequenceClassification`, the head in `modules_to_save`).
        args: LoRA settings (default: `LoraStudentArguments()`). `args.use_peft` is not consulted: callers
            decide whether to call this.

    Returns:
        The student to train. Trainable parameters: the LoRA matrices, the per-teacher heads and the rest of the
        classification head (see `LoraStudentArguments.lora_modules_to_save`); everything else is frozen.

    Example:
    ```python
    >>> student = apply_lora(MultiHeadStudent.from_pretrained("small-bert", num_teachers=3, num_labels=2),
    ...                      LoraStudentArguments(lora_r=8))
    >>> trainer = MultiTeacherDistillationTrainer(model=student, ...); trainer.train()
    >>> trainer.save_model("out")   # plain merged model: LoRA folded into the weights, heads folded into one
    ```
    """
    args = args if args is not None else LoraStudentArguments()
    if is_peft_student(student):
        raise ValueError("The student is already a PeftModel: apply_lora adds adapters once, to a model without them.")
    if isinstance(student, MultiHeadStudent):
        if type(student) is not MultiHeadStudent and not isinstance(student, LoraMultiHeadStudent):
            raise TypeError(
                f"apply_lora turns a MultiHeadStudent into a LoraMultiHeadStudent; {type(student).__name__} is a "
                "subclass of it that would lose its own behaviour. Subclass LoraMultiHeadStudent instead."
            )
        base, head_module = student.model, student.head_module
    elif isinstance(student, PreTrainedModel):
        base = student
        head_module = find_classification_head(student, student.config.num_labels)
    else:
        raise TypeError(
            f"apply_lora takes a MultiHeadStudent or a transformers sequence classifier, got {type(student).__name__}."
        )
    if has_lora_layers(base):
        raise ValueError("The student already has LoRA layers: apply_lora adds adapters once.")

    from peft import LoraConfig, get_peft_model, inject_adapter_in_model

    targets = args.lora_target_modules or _default_targets(base)
    trained = _trained_modules(base, head_module, args.lora_modules_to_save)
    # never put an adapter on a layer that is trained in full (e.g. 'dense' would otherwise match RoBERTa's head)
    excluded = [n for n, _ in base.named_modules() if any(n == t or n.startswith(t + ".") for t in trained)]
    config_kwargs = dict(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules="all-linear" if [t.lower() for t in targets] == ["all-linear"] else targets,
        exclude_modules=excluded,
        bias="none",
    )
    try:
        if isinstance(student, MultiHeadStudent):
            inject_adapter_in_model(LoraConfig(**config_kwargs), base)
        else:
            student = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", modules_to_save=trained, **config_kwargs))
    except ValueError as err:
        if "not found in the base model" not in str(err) and "No modules were targeted" not in str(err):
            raise
        linears = sorted({n.rpartition(".")[2] for n, m in base.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora_target_modules={targets} match no layer of {type(base).__name__} outside the head. Its linear "
            f"layers are named {linears}: pass some of those (e.g. the attention query/value projections)."
        ) from err
    if isinstance(student, MultiHeadStudent):
        for name in trained:
            for param in base.get_submodule(name).parameters():
                param.requires_grad_(True)
        student.__class__ = LoraMultiHeadStudent  # the same object: callers holding it see the adapters
        student.lora_settings = {**args.to_settings(), "lora_target_modules": list(targets), "use_peft": True}
    logger.info(
        f"LoRA (r={args.lora_r}, alpha={args.lora_alpha}) on {targets}; trained in full: {trained}; "
        f"{count_trainable_parameters(student):,} of {sum(p.numel() for p in student.parameters()):,} parameters train."
    )
    return student


class LoraMultiHeadStudent(MultiHeadStudent):
    """A [`MultiHeadStudent`] whose encoder holds LoRA adapters; `apply_lora` turns a multi-head student into one,
    in place. What it adds: `lora_settings` saved in tmkd_student.json (reloaded by `MultiHeadStudent.from_pretrained`
    with the same adapters), `merge_heads()` that also folds the adapters into the base weights (the export is a
    plain model), and `with_heads()` that keeps the adapters."""

    lora_settings: dict

    def checkpoint_config(self) -> dict:
        return {**super().checkpoint_config(), LORA_CONFIG_KEY: self.lora_settings}

    def merge_heads(self) -> PreTrainedModel | MultiHeadStudent:
        return merge_lora(self).merge_heads()  # the one export path: adapters folded (in a copy), then the heads

    def with_heads(self, num_heads: int) -> LoraMultiHeadStudent:
        student = super().with_heads(num_heads)
        student.__class__ = LoraMultiHeadStudent
        student.lora_settings = dict(self.lora_settings)
        return student


def _restore_lora(student: MultiHeadStudent, settings: dict) -> MultiHeadStudent:
    """A LoRA student's checkpoint: the same adapters are injected before its weights load."""
    return apply_lora(student, LoraStudentArguments.from_settings(settings))


register_checkpoint_extension(LORA_CONFIG_KEY, _restore_lora)


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----- merging and export -----


def merge_lora_layers(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter of `model` into its base weights, in place; the result is a plain, trainable model.

    The in-place counterpart of peft's `merge_and_unload` for models that hold injected adapters without a
    `PeftModel` wrapper (a LoRA [`MultiHeadStudent`]'s encoder). A model without adapters is returned unchanged.
    """
    if not has_lora_layers(model):
        return model
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in [n for n in layers if not any(n.startswith(outer + ".") for outer in layers)]:
        layer = model.get_submodule(name)
        layer.merge()
        _set_submodule(model, name, layer.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def merge_lora(student: nn.Module) -> nn.Module:
    """A copy of `student` with its LoRA adapters folded into the base weights (heads kept, every one).

    A LoRA `MultiHeadStudent` gives a `MultiHeadStudent` without adapters (what stage 2 starts from: it saves and
    reloads like any multi-head student); a `PeftModel` gives its merged base model (`merge_and_unload`); a model
    without adapters is returned as it is.
    """
    if isinstance(student, MultiHeadStudent):
        if not has_lora_layers(student.model):
            return student
        merged = copy.deepcopy(student)
        merge_lora_layers(merged.model)
        merged.__class__ = MultiHeadStudent
        vars(merged).pop("lora_settings", None)  # a plain MultiHeadStudent has no LoRA settings
        return merged
    if is_peft_student(student):
        merged = copy.deepcopy(student).merge_and_unload()
        for param in merged.parameters():
            param.requires_grad_(True)
        return merged
    return merge_lora_layers(copy.deepcopy(student)) if has_lora_layers(student) else student


def merge_student(student: nn.Module) -> PreTrainedModel:
    """The plain `AutoModelForSequenceClassification` model to publish: LoRA merged, then the heads merged.

    Works for a `MultiHeadStudent` (with or without LoRA), a `PeftModel` student and a plain model (returned as it
    is). Its logits equal the student's (combined) logits up to float rounding.
    """
    student = merge_lora(student)
    if isinstance(student, MultiHeadStudent):
        student = student.merge_heads()
    if not isinstance(student, PreTrainedModel):
        raise TypeError(f"Cannot export a {type(student).__name__} as a transformers model.")
    return student


def save_merged_student(student: nn.Module, save_directory: str | os.PathLike, tokenizer=None) -> PreTrainedModel:
    """Save `merge_student(student)` (and the tokenizer) to `save_directory`: loads without peft or tmkd_hf.

    The counterpart of `trainer.save_model()` for a plain `PeftModel` student, whose `Trainer` save writes the
    adapter only; for a `MultiHeadStudent` (LoRA or not) `trainer.save_model()` already writes this merged model.
    """
    merged = merge_student(student)
    merged.save_pretrained(save_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
    return merged
