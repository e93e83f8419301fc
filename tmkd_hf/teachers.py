"""Teachers: how they are named (`TeacherSpec`), loaded (plain checkpoints, Hub ids, PEFT adapters sharing one
base model), identified in a manifest, and aligned by label name."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from .cross_encoder import DENSE_DIR, cross_encoder_snapshot, is_cross_encoder_dir
from .hub_id import HUB_ID
from .modeling import STUDENT_CONFIG_NAME, MultiHeadStudent, multihead_checkpoint_dir

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")


def check_model_location(name_or_path: str, what: str = "model") -> None:
    """Fail early, naming the path, when `name_or_path` is neither a directory nor something a Hub id can be.

    Without this, a typo in a local path reaches `from_pretrained`, which answers "Repo id must be in the form
    'repo_name' or 'namespace/repo_name'" and names no flag. Hub ids are left to the Hub (and its offline errors)."""
    text = os.fspath(name_or_path)
    if os.path.isdir(text):
        return
    if os.path.isfile(text):
        raise ValueError(f"{what} {text!r} is a file; give the checkpoint's directory (the one with config.json).")
    if not HUB_ID.fullmatch(text) or ".." in text or text.endswith("."):
        raise FileNotFoundError(
            f"{what} {text!r}: no such directory, and it is not a Hub id ('name' or 'namespace/name'). Check the "
            "path (relative paths are relative to the working directory, " + repr(os.getcwd()) + ")."
        )
    from huggingface_hub import constants, try_to_load_from_cache

    # a plain checkpoint has config.json at its root, a multi-head (stage-1) student tmkd_student.json
    cached = (try_to_load_from_cache(text, name) for name in ("config.json", "tmkd_student.json"))
    if constants.HF_HUB_OFFLINE and not any(isinstance(path, str) for path in cached):
        raise FileNotFoundError(
            f"{what} {text!r}: no such directory, and as a Hub id it is not in the local cache while the Hub is "
            "offline (HF_HUB_OFFLINE=1). Check the path, or download it once with the Hub reachable."
        )


def check_argument_locations(
    arguments, flags: tuple[str, ...] = ("model_name_or_path", "student_init_from", "tokenizer_name")
) -> None:
    """A recipe's model flags and `--teachers`, checked before anything loads; each error names its flag."""
    for flag in flags:
        if getattr(arguments, flag, None):
            check_model_location(getattr(arguments, flag), f"--{flag}")
    for i, teacher in enumerate(getattr(arguments, "teachers", None) or []):
        try:
            TeacherSpec.parse(teacher).check_location()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--teachers [{i}]: {err}") from None


@dataclass(frozen=True)
class TeacherSpec:
    """Where a teacher comes from.

    Args:
        name_or_path: a local checkpoint directory or a Hub model id (the base model, for an adapter).
        revision: Hub revision (branch, tag or commit) of `name_or_path`.
        adapter: a PEFT adapter (local dir or Hub id) applied on `name_or_path`. Several adapters on the same
            base are run on one loaded base model, switching adapters.
        tokenizer: where the tokenizer lives (default: the adapter if it ships one, else `name_or_path`).
    """

    name_or_path: str
    revision: str | None = None
    adapter: str | None = None
    tokenizer: str | None = None

    def check_location(self) -> None:
        """Each local path exists, each Hub id can be reached (else a FileNotFoundError naming it): called before
        any teacher is loaded, so a typo in the third teacher fails before the first one runs."""
        check_model_location(self.name_or_path, "teacher")
        if self.adapter is not None:
            check_model_location(self.adapter, "teacher adapter")
        if self.tokenizer is not None:
            check_model_location(self.tokenizer, "teacher tokenizer")

    @classmethod
    def parse(cls, spec: str | os.PathLike | dict | TeacherSpec) -> TeacherSpec:
        """Accept `"path"`, `"hub/id@revision"`, an adapter directory, a dict of the fields, or a spec."""
        if isinstance(spec, TeacherSpec):
            return spec
        if isinstance(spec, dict):
            unknown = set(spec) - {"name_or_path", "revision", "adapter", "tokenizer"}
            if unknown:
                raise ValueError(f"Unknown teacher fields {sorted(unknown)} in {spec}.")
            return cls(**spec)
        text = str(spec)
        if os.path.isfile(os.path.join(text, ADAPTER_CONFIG)):
            with open(os.path.join(text, ADAPTER_CONFIG)) as f:
                base = json.load(f).get("base_model_name_or_path")
            if not base:
                raise ValueError(f"PEFT adapter {text!r} does not name its base model (base_model_name_or_path).")
            return cls(name_or_path=base, adapter=text)
        if not os.path.exists(text) and "@" in text:
            name, _, revision = text.rpartition("@")
            return cls(name_or_path=name, revision=revision)
        return cls(name_or_path=text)

    @property
    def name(self) -> str:
        base = self.name_or_path + (f"@{self.revision}" if self.revision else "")
        return f"{base}+{self.adapter}" if self.adapter else base

    def tokenizer_source(self) -> str:
        if self.tokenizer:
            return self.tokenizer
        if self.adapter and os.path.isfile(os.path.join(self.adapter, "tokenizer_config.json")):
            return self.adapter
        return self.name_or_path

    def identity(self) -> dict:
        """What the manifest records: the spec, plus a content hash of local weights (a revision for Hub ids)."""
        record = {k: v for k, v in asdict(self).items() if v is not None}
        hashes = {}
        for role, path in (("weights_sha256", self.name_or_path), ("adapter_sha256", self.adapter)):
            if path and os.path.isdir(path):
                hashes[role] = _weights_hash(path)
        return {**record, **hashes}


def _weights_hash(directory: str) -> str:
    """sha256 of the weight files (a CrossEncoder's scoring layer in `2_Dense/` included)."""
    digest = hashlib.sha256()
    names = sorted(os.listdir(directory))
    if os.path.isdir(os.path.join(directory, DENSE_DIR)):
        names += [f"{DENSE_DIR}/{n}" for n in sorted(os.listdir(os.path.join(directory, DENSE_DIR)))]
    for name in names:
        base = os.path.basename(name)
        if base in _WEIGHT_FILES or base.endswith(".safetensors"):
            digest.update(name.encode())
            with open(os.path.join(directory, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_teacher(teacher: str | os.PathLike | dict | TeacherSpec | nn.Module, **kwargs) -> PreTrainedModel:
    """One teacher ready for inference (eval mode). An adapter is loaded on its base and merged."""
    if isinstance(teacher, nn.Module):
        return teacher.eval()
    spec = TeacherSpec.parse(teacher)
    spec.check_location()
    base = _load_base(spec, **kwargs)
    if spec.adapter is None:
        return base.eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(base, spec.adapter).merge_and_unload().eval()


def _load_base(spec: TeacherSpec, **kwargs) -> PreTrainedModel:
    if spec.adapter is None:  # before the config check: a multi-head checkpoint keeps its config in tmkd_student.json
        local = tmkd_classifier_dir(spec.name_or_path, spec.revision)
        if local is not None:
            return MultiHeadStudent.from_pretrained(local, **kwargs)  # a CrossEncoder export or multi-head checkpoint
    try:
        AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision)
    except OSError as err:
        raise ValueError(
            f"Cannot load teacher {spec.name!r}: {spec.name_or_path!r} is not a local model directory and is not "
            f"reachable on the Hub ({err})."
        ) from err
    if spec.adapter is not None and os.path.isdir(spec.adapter):
        num_labels = _adapter_num_labels(spec.adapter)
        if num_labels is not None:
            kwargs.setdefault("num_labels", num_labels)
    return AutoModelForSequenceClassification.from_pretrained(spec.name_or_path, revision=spec.revision, **kwargs)


def is_tmkd_classifier_dir(path: str) -> bool:
    """A directory only tmkd_hf (or sentence-transformers) reads as a classifier: a mean-pooled CrossEncoder export
    or a multi-head training checkpoint."""
    path = str(path)
    multi_head = os.path.isfile(os.path.join(path, STUDENT_CONFIG_NAME))
    return os.path.isdir(path) and (is_cross_encoder_dir(path) or multi_head)


def tmkd_classifier_dir(name_or_path: str, revision: str | None = None) -> str | None:
    """The local directory of a classifier only tmkd_hf (or sentence-transformers) reads, a mean-readout
    CrossEncoder export or a multi-head checkpoint: the directory itself, or for a Hub id the snapshot of what
    loading it needs. `None` for anything else (a plain checkpoint loads with `AutoModelForSequenceClassification`,
    which would give a CrossEncoder's encoder a fresh, random head: hence this check before it)."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path if is_tmkd_classifier_dir(path) else None
    if not HUB_ID.fullmatch(path):
        return None
    return multihead_checkpoint_dir(path, revision=revision) or cross_encoder_snapshot(path, revision=revision)


def load_classifier(name_or_path: str | os.PathLike, **kwargs) -> nn.Module:
    """Any classifier tmkd_hf exports or trains, for inference: a plain `AutoModelForSequenceClassification`
    checkpoint, a CrossEncoder export of a mean-readout student, or a multi-head checkpoint, each a directory or a
    Hub id. The result's `forward` returns `.logits` and it has a `.config` with the label names."""
    return load_teacher(str(name_or_path), **kwargs)


def _adapter_num_labels(adapter_dir: str) -> int | None:
    """The label count of the classification head an adapter saved (PEFT's `modules_to_save`), if any."""
    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        for key in f.keys():
            if key.endswith(("classifier.weight", "out_proj.weight", "score.weight")):
                return f.get_slice(key).get_shape()[0]
    return None


def iter_loaded_teachers(specs: list[TeacherSpec], **kwargs) -> Iterator[tuple[list[int], nn.Module]]:
    """Yield `(indices, model)` with one model in memory at a time.

    Adapters on the same base (and revision) share one loaded base: the yielded model is a `PeftModel` whose
    active adapter is switched before each yield, so `indices` holds the one teacher it currently is.
    """
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        key = (spec.name_or_path, spec.revision, "adapter" if spec.adapter else f"plain-{i}")
        groups.setdefault(key, []).append(i)
    for (_, _, kind), indices in groups.items():
        if kind != "adapter":
            yield indices, load_teacher(specs[indices[0]], **kwargs)
            continue
        from peft import PeftModel

        base = _load_base(specs[indices[0]], **kwargs)
        model = None
        for i in indices:
            name = f"teacher_{i}"
            if model is None:
                model = PeftModel.from_pretrained(base, specs[i].adapter, adapter_name=name)
            else:
                model.load_adapter(specs[i].adapter, adapter_name=name)
            model.set_adapter(name)
            yield [i], model.eval()


def load_tokenizer(spec: TeacherSpec):
    return AutoTokenizer.from_pretrained(spec.tokenizer_source(), revision=None if spec.adapter else spec.revision)


def are_default_label_names(names) -> bool:
    """True when every name is one of transformers' `LABEL_0`, `LABEL_1`, ... defaults: labels known by position."""
    return all(_DEFAULT_LABEL.match(str(n)) for n in names)


def has_named_labels(config) -> bool:
    """True when `config.id2label` carries real names (not transformers' `LABEL_0`, `LABEL_1`, ... defaults)."""
    id2label = getattr(config, "id2label", None) or {}
    return bool(id2label) and not are_default_label_names(id2label.values())


def label_names(config) -> list[str]:
    """Label names of a config in id order."""
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def label_permutation(teacher_config, reference_names: list[str] | None, teacher_name: str, reference_name: str):
    """Index `perm` such that `teacher_logits[..., perm]` is in the reference label order (None: same order).

    Teachers whose labels are named are matched by name (case-insensitive); transformers' default `LABEL_i`
    names match by position. Different label sets are an error naming both sides.
    """
    n = teacher_config.num_labels
    if reference_names is not None and len(reference_names) != n:
        raise ValueError(
            f"Teacher {teacher_name!r} predicts {n} labels ({label_names(teacher_config)}) but {reference_name} has "
            f"{len(reference_names)} ({list(reference_names)}). All teachers and the student must share one label set."
        )
    if reference_names is None or not has_named_labels(teacher_config):
        return None
    if are_default_label_names(reference_names):
        return None
    names = [s.lower() for s in label_names(teacher_config)]
    ref = [str(s).lower() for s in reference_names]
    if sorted(names) != sorted(ref):
        raise ValueError(
            f"Label sets differ: teacher {teacher_name!r} has {label_names(teacher_config)} but {reference_name} has "
            f"{list(reference_names)}. Teachers must be fine-tuned on the same task; fix the id2label of the "
            "checkpoint whose names are wrong."
        )
    perm = [names.index(r) for r in ref]
    return None if perm == list(range(n)) else perm


@torch.no_grad()
def teacher_forward(teacher: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits `[batch, num_labels]` of `teacher` on already tokenized `inputs` (extra keys ignored)."""
    forward = teacher.get_base_model().forward if hasattr(teacher, "get_base_model") else teacher.forward
    params = inspect.signature(forward).parameters
    keys = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    return teacher(**{k: inputs[k] for k in keys if k in inputs and k in params}).logits.float()
