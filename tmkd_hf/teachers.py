"""Loading teachers and aligning their label spaces by label name."""

from __future__ import annotations

import inspect
import os
import re

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def has_named_labels(config) -> bool:
    """True when `config.id2label` carries real names (not transformers' `LABEL_0`, `LABEL_1`, ... defaults)."""
    id2label = getattr(config, "id2label", None) or {}
    return bool(id2label) and not all(_DEFAULT_LABEL.match(str(v)) for v in id2label.values())


def label_names(config) -> list[str]:
    """Label names of a config in id order."""
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def label_permutation(teacher_config, reference_names: list[str] | None, teacher_name: str, reference_name: str):
    """Index `perm` such that `teacher_logits[..., perm]` is in the reference label order (None: same order).

    Teachers whose labels are named are matched by name (case-insensitive); transformers' default `LABEL_i`
    names match by position. Different label sets are an error naming both sides.
    """
    n = teacher_config.num_labels
    if reference_names is None or not has_named_labels(teacher_config):
        if reference_names is not None and len(reference_names) != n:
            raise ValueError(
                f"Teacher {teacher_name!r} predicts {n} labels but {reference_name} has {len(reference_names)} "
                f"({reference_names}). All teachers and the student must share one label set."
            )
        return None
    names = [s.lower() for s in label_names(teacher_config)]
    ref = [s.lower() for s in reference_names]
    if all(_DEFAULT_LABEL.match(s.upper()) for s in reference_names):
        if len(ref) != n:
            raise ValueError(f"Teacher {teacher_name!r} has {n} labels, {reference_name} has {len(ref)}.")
        return None
    if sorted(names) != sorted(ref):
        raise ValueError(
            f"Label sets differ: teacher {teacher_name!r} has {label_names(teacher_config)} but {reference_name} has "
            f"{list(reference_names)}. Teachers must be fine-tuned on the same task; fix the id2label of the "
            "checkpoint whose names are wrong."
        )
    perm = [names.index(r) for r in ref]
    return None if perm == list(range(n)) else perm


def load_teacher(teacher: str | os.PathLike | nn.Module, revision: str | None = None, **kwargs) -> PreTrainedModel:
    """A teacher ready for inference: a loaded model as is, a local dir / Hub id / PEFT adapter dir loaded.

    A directory with `adapter_config.json` is loaded as a PEFT adapter on its base model and merged.
    """
    if isinstance(teacher, nn.Module):
        return teacher.eval()
    path = str(teacher)
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(path, revision=revision, **kwargs)
        return model.merge_and_unload().eval()
    try:
        AutoConfig.from_pretrained(path, revision=revision)
    except OSError as err:
        raise ValueError(
            f"Cannot load teacher {path!r}: not a local model directory and not reachable on the Hub ({err})."
        ) from err
    return AutoModelForSequenceClassification.from_pretrained(path, revision=revision, **kwargs).eval()


@torch.no_grad()
def teacher_forward(teacher: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits `[batch, num_labels]` of `teacher` on already tokenized `inputs` (extra keys ignored)."""
    params = inspect.signature(teacher.forward).parameters
    keys = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    return teacher(**{k: inputs[k] for k in keys if k in inputs and k in params}).logits.float()
