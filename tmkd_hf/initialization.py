"""`student_from_teacher_layers`: a shallower student that starts from chosen layers of its teacher.

The DistilBERT initialisation recipe (Sanh et al., 2019): the student keeps the teacher's architecture and width,
with fewer encoder layers, and copies the embeddings, the chosen layers (in order) and everything after the encoder
(pooler; the classification head when the teacher has one of the right shape). Starting from teacher layers instead
of random weights is what makes a small student trainable on a few thousand examples.

A layer is more than its weights: some families build each layer with settings of its own, read from per-layer
config fields (ModernBERT's `layer_types`: sliding-window or global attention; a Longformer's `attention_window`
list). Those fields follow the chosen layers, and every student layer is then checked to be built like the teacher
layer it copies; a student that would run a teacher layer with other settings is refused, never built. ALBERT
shares one set of layer weights across its depth: its student repeats it fewer times. Funnel pools the sequence
between blocks, so its layers cannot be picked one by one: refused.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging

from .modeling import MultiHeadStudent
from .readout import CONFIG_KEY, detect_readout

logger = logging.get_logger(__name__)

# Keyword arguments that concern where/how the teacher is loaded; all others override the student's config.
_LOADING_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder", "trust_remote_code")
# Config lists that can be as long as the layer stack without holding one entry per layer (DeBERTa's two
# relative-attention kinds, the architectures' names).
_NOT_PER_LAYER = frozenset({"architectures", "pos_att_type"})
_PLAIN = (bool, int, float, str, type(None))


def per_layer_fields(config) -> dict[str, list]:
    """The config fields that hold one entry per encoder layer: lists exactly as long as the layer stack
    (ModernBERT's `layer_types`, a Longformer's `attention_window` list), less `_NOT_PER_LAYER`."""
    num_layers = config.num_hidden_layers
    return {
        key: list(value)
        for key, value in config.to_dict().items()
        if isinstance(value, (list, tuple)) and len(value) == num_layers and key not in _NOT_PER_LAYER
    }


def _layer_settings(layer: nn.Module) -> dict[str, object]:
    """How a layer was built beyond its weights: the class and plain attributes of each of its modules (attention
    type, window size, dropout rate, ...), by dotted name."""
    settings = {}
    for name, module in layer.named_modules():
        settings[name or "."] = type(module).__name__
        for key, value in vars(module).items():
            if not key.startswith("_") and key != "training" and isinstance(value, _PLAIN):
                settings[f"{name}.{key}" if name else key] = value
    return settings


def _check_built_alike(reference: nn.Module, student: nn.Module, layer_list: str, layers: list[int]) -> None:
    """Refuse a student whose layer `j` is not built like the teacher's layer `layers[j]` (`reference`: the teacher's
    architecture with the student's config overrides). A per-layer setting that no config list carries would
    otherwise run silently with the wrong value. An attribute that records the layer's own position (`layer_id`,
    BigBird's `seed`) may differ: it is `i` in the teacher and `j` in the student."""
    teacher_layers, student_layers = reference.get_submodule(layer_list), student.get_submodule(layer_list)
    for j, i in enumerate(layers):
        expected, got = _layer_settings(teacher_layers[i]), _layer_settings(student_layers[j])
        differ = {}
        for key in sorted(expected.keys() | got.keys()):
            was, now = expected.get(key), got.get(key)
            own_position = type(was) is int and type(now) is int and (was, now) == (i, j)  # not a bool: True == 1
            if was != now and not own_position:
                differ[key] = (was, now)
        if differ:
            shown = ", ".join(f"{k}: {t!r} in the teacher, {s!r} here" for k, (t, s) in list(differ.items())[:3])
            raise ValueError(
                f"{type(student).__name__} builds a layer by its position, not from its weights alone: at position "
                f"{j} the student cannot hold teacher layer {i} ({shown}). Choose layers that keep their place's "
                f"build (the first ones always do: layers={list(range(len(layers)))}), or start the student from a "
                "smaller checkpoint of the same family (MultiHeadStudent.from_pretrained)."
            )


def _encoder_layer_list(model: nn.Module, num_layers: int) -> str:
    """Dotted name of the `nn.ModuleList` that holds the encoder layers (`bert.encoder.layer`, ...)."""
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and re.search(r"(^|\.)layers?$", name)
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"Cannot find the encoder layers of {type(model).__name__}: expected exactly one nn.ModuleList named "
            f"'*.layer' or '*.layers' with num_hidden_layers={num_layers} entries, found {candidates or 'none'}. "
            "student_from_teacher_layers supports BERT-family encoders (BERT, RoBERTa, DistilBERT, ELECTRA, ...)."
        )
    return candidates[0]


def student_from_teacher_layers(
    teacher_name_or_path: str | os.PathLike | PreTrainedModel,
    layers: Sequence[int] = (0, 2, 4),
    num_labels: int = 2,
    **kwargs,
) -> PreTrainedModel:
    """A sequence classifier with `len(layers)` encoder layers copied from the teacher's layers `layers`.

    Args:
        teacher_name_or_path: a local directory, Hub id or loaded model: a fine-tuned classifier or a bare encoder
            (a `BertModel` checkpoint such as all-MiniLM-L6-v2 loads too; its head is then initialised fresh).
        layers: teacher layer indices, 0-based, copied in this order to student layers 0, 1, ... Negative indices
            count from the last layer. The DistilBERT recipe takes every other layer, e.g. `(0, 2, 4)` of 6.
        num_labels: label count of the student's classification head.
        kwargs: `revision`, `cache_dir`, `token`, `local_files_only`, `subfolder`, `trust_remote_code` are used to
            load the teacher; everything else overrides the student's config (`id2label`, `label2id`,
            `hidden_dropout_prob`, ...).

    Returns:
        An `AutoModelForSequenceClassification` model whose config has `num_hidden_layers == len(layers)`. The
        classification head is copied from the teacher when the teacher has one with `num_labels` outputs, otherwise
        it is newly initialised (seed with `transformers.set_seed` for a reproducible head). Its config records the
        readout the teacher was trained with (`tmkd_readout`: 'mean' for a mean-pooled sentence-transformers
        backbone, else 'cls'), which `MultiHeadStudent(student, ...)` then uses: wrap a mean-readout student
        (`MultiHeadStudent(student, num_heads=1)` for one head) rather than training it as a plain [CLS] model.

    Example:
    ```python
    >>> student = student_from_teacher_layers("path/to/minilm-l6", layers=[0, 2, 4], num_labels=2,
    ...                                        id2label={0: "entailment", 1: "not_entailment"},
    ...                                        label2id={"entailment": 0, "not_entailment": 1})
    >>> student.config.num_hidden_layers
    3
    ```
    """
    load_kwargs = {k: kwargs.pop(k) for k in _LOADING_KWARGS if k in kwargs}
    if isinstance(teacher_name_or_path, MultiHeadStudent):
        teacher_name_or_path = teacher_name_or_path.model  # its encoder and (multi-)head: the layers are read
    if isinstance(teacher_name_or_path, PreTrainedModel):
        teacher_config = teacher_name_or_path.config
        readout = getattr(teacher_config, CONFIG_KEY, None) or "cls"
    else:
        teacher_config = AutoConfig.from_pretrained(str(teacher_name_or_path), **load_kwargs)
        readout = detect_readout(str(teacher_name_or_path), revision=load_kwargs.get("revision"))
    num_teacher_layers = getattr(teacher_config, "num_hidden_layers", None)
    if num_teacher_layers is None or isinstance(num_teacher_layers, bool) or num_teacher_layers < 1:
        raise ValueError(
            f"The teacher's config ({type(teacher_config).__name__}) has no num_hidden_layers: "
            "student_from_teacher_layers supports encoder models with a stack of layers (BERT family)."
        )
    layers = _check_layers(layers, num_teacher_layers)
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}.")
    if getattr(teacher_config, "block_sizes", None) is not None:
        raise ValueError(
            f"{type(teacher_config).__name__}: the encoder pools the sequence between its blocks (block_sizes="
            f"{list(teacher_config.block_sizes)}), so its layers cannot be picked one by one. Start the student from "
            "a smaller checkpoint of the same family (MultiHeadStudent.from_pretrained)."
        )
    shared_groups = getattr(teacher_config, "num_hidden_groups", None)  # ALBERT: layers share their weights
    if shared_groups not in (None, 1):
        raise ValueError(
            f"The teacher shares its layer weights in {shared_groups} groups (num_hidden_groups); "
            "student_from_teacher_layers supports one shared group (every released ALBERT): the student repeats "
            "it len(layers) times. Start the student from a smaller checkpoint (MultiHeadStudent.from_pretrained)."
        )

    not_in_checkpoint: set[str] = set()
    if isinstance(teacher_name_or_path, PreTrainedModel):
        teacher = teacher_name_or_path
    else:
        # The teacher keeps its own head size (loading never resizes it); only its weights are read. A bare encoder
        # checkpoint gets a random head here: `not_in_checkpoint` keeps it from being copied as if it were trained.
        teacher, info = AutoModelForSequenceClassification.from_pretrained(
            str(teacher_name_or_path), output_loading_info=True, **load_kwargs
        )
        not_in_checkpoint = set(info.get("missing_keys", ()))
    # ALBERT applies one shared layer num_hidden_layers times: every weight keeps its name, only the count changes.
    layer_list = None if shared_groups == 1 else _encoder_layer_list(teacher, num_teacher_layers)

    reference_config = copy.deepcopy(teacher_config)  # the teacher's architecture with the student's overrides
    reference_config.num_labels = num_labels  # also resets id2label/label2id unless given in kwargs
    for key, value in kwargs.items():
        if key in ("id2label", "label2id"):
            value = (
                {int(k): v for k, v in value.items()} if key == "id2label" else {k: int(v) for k, v in value.items()}
            )
        setattr(reference_config, key, value)
    if len(reference_config.id2label) != num_labels:
        raise ValueError(f"id2label has {len(reference_config.id2label)} labels but num_labels={num_labels}.")
    reference_config.architectures = None
    student_config = copy.deepcopy(reference_config)
    for key, values in per_layer_fields(reference_config).items():  # each chosen layer keeps its own settings
        setattr(student_config, key, [values[i] for i in layers])
    student_config.num_hidden_layers = len(layers)
    student = AutoModelForSequenceClassification.from_config(student_config)
    if layer_list is not None:
        with torch.device("meta"):  # the teacher's layers as they would be built, without memory or weights
            reference = AutoModelForSequenceClassification.from_config(reference_config)
        _check_built_alike(reference, student, layer_list, layers)

    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    prefix = re.compile(rf"^{re.escape(layer_list)}\.(\d+)\.") if layer_list is not None else None
    copied, fresh = {}, []
    for key, value in student_state.items():
        match = prefix.match(key) if prefix is not None else None
        source = f"{layer_list}.{layers[int(match.group(1))]}.{key[match.end() :]}" if match else key
        if source in teacher_state and source not in not_in_checkpoint and teacher_state[source].shape == value.shape:
            copied[key] = teacher_state[source]
        elif match:  # a layer weight that the teacher cannot provide: the architectures do not line up
            raise ValueError(f"Teacher has no weight {source!r} of shape {tuple(value.shape)} for student {key!r}.")
        elif not key.endswith("position_ids"):
            fresh.append(key)
    with torch.no_grad():
        student.load_state_dict(copied, strict=False)
    if fresh:
        logger.info(f"Student weights not in the teacher (newly initialised): {fresh}")
    student.config.name_or_path = ""
    setattr(student.config, CONFIG_KEY, readout)
    return student


def _check_layers(layers: Sequence[int], num_teacher_layers: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a list of teacher layer indices, e.g. [0, 2, 4], got {layers!r}.")
    layers = list(layers)
    if not layers:
        raise ValueError(
            f"layers is empty: give the teacher layer indices to copy (0..{num_teacher_layers - 1}), e.g. [0, 2, 4]."
        )
    bad_type = [i for i in layers if not isinstance(i, int) or isinstance(i, bool)]
    if bad_type:
        raise ValueError(f"layers must hold integers, got {bad_type} in {layers}.")
    out_of_range = [i for i in layers if not -num_teacher_layers <= i < num_teacher_layers]
    if out_of_range:
        raise ValueError(
            f"Layer indices {out_of_range} are out of range: the teacher has {num_teacher_layers} layers "
            f"(valid indices 0..{num_teacher_layers - 1}, or negative from the end); got layers={layers}."
        )
    return [i % num_teacher_layers for i in layers]
