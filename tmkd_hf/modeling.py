"""`MultiHeadStudent`: one shared encoder, one classification head per teacher, merged exactly for export.

TMKD's "multi-header" student (m-o-1, early calibration): only the *final* linear layer of the model's own
classification head is replicated; everything before it is shared. Head *i* learns from teacher *i*. At inference
the heads are combined by a weighted mean of their logits. Because every head is linear in the same features,
`sum_i w_i (W_i x + b_i) = (sum_i w_i W_i) x + sum_i w_i b_i`: the combination folds into one ordinary linear
layer, and the published student is a plain `AutoModelForSequenceClassification` checkpoint.

The student reads out the way its backbone was trained (`tmkd_hf.readout`): `readout="cls"` runs the model's own
head ([CLS] -> pooler -> final linear layer, for BERT); `readout="mean"` feeds the final linear layer(s) the mean of
the last hidden states over the non-padding tokens (sentence-transformers backbones) and exports as a
sentence-transformers `CrossEncoder` (`tmkd_hf.cross_encoder`), since no transformers class reads out a mean.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import safetensors.torch
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from .cross_encoder import is_cross_encoder_dir, mark_readout, read_cross_encoder, write_cross_encoder
from .hub_id import HUB_ID
from .losses import hard_loss
from .readout import CONFIG_KEY, check_readout, detect_readout, masked_mean

STUDENT_CONFIG_NAME = "tmkd_student.json"
WEIGHTS_NAME = "model.safetensors"

# Where the final linear layer of the classification head lives, by model family (checked in this order).
HEAD_CANDIDATES = (
    "classifier.out_proj",  # RoBERTa, XLM-R, MPNet, ELECTRA, Longformer, CamemBERT
    "classification_head.out_proj",  # BART, mBART
    "classifier.linear_out",  # Funnel
    "classifier",  # BERT, DistilBERT, ALBERT, DeBERTa(-v2), ModernBERT
    "score",  # GPT-2, Llama, Mistral, Qwen
    "logits_proj",  # XLNet
)


def find_classification_head(model: nn.Module, num_labels: int) -> str:
    """Name of the final `nn.Linear` of `model`'s classification head (the layer producing the logits)."""
    for name in HEAD_CANDIDATES:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, (nn.Linear, MultiHeadLinear)) and module.out_features == num_labels:
            return name
    linears = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, MultiHeadLinear)) and m.out_features == num_labels
    ]
    if linears:
        return linears[-1]
    raise ValueError(
        f"Could not find the classification head of {type(model).__name__}: no nn.Linear with "
        f"out_features == num_labels ({num_labels}). Pass head_module='<dotted.name.of.final.linear>'."
    )


class MultiHeadLinear(nn.Module):
    """`num_heads` copies of a linear layer evaluated in one matmul: `[..., in] -> [..., num_heads, out]`."""

    def __init__(self, in_features: int, out_features: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.num_heads = in_features, out_features, num_heads
        self.weight = nn.Parameter(torch.empty(num_heads, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_heads, out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_heads: int) -> MultiHeadLinear:
        """Replicate `linear` `num_heads` times (every head starts from the same weights)."""
        head = cls(linear.in_features, linear.out_features, num_heads, bias=linear.bias is not None)
        head.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(linear.weight.unsqueeze(0).expand_as(head.weight))
            if linear.bias is not None:
                head.bias.copy_(linear.bias.unsqueeze(0).expand_as(head.bias))
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat_weight = self.weight.reshape(-1, self.in_features)
        flat_bias = self.bias.reshape(-1) if self.bias is not None else None
        out = nn.functional.linear(x, flat_weight, flat_bias)
        return out.view(*x.shape[:-1], self.num_heads, self.out_features)

    def merge(self, head_weights: torch.Tensor) -> nn.Linear:
        """One `nn.Linear` whose output is the `head_weights`-weighted sum of the heads' outputs."""
        w = head_weights.to(torch.float64)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            merged_w = torch.einsum("h,hoi->oi", w, self.weight.detach().to(torch.float64))
            linear.weight.copy_(merged_w)
            if self.bias is not None:
                linear.bias.copy_(torch.einsum("h,ho->o", w, self.bias.detach().to(torch.float64)))
        return linear.to(device=self.weight.device, dtype=self.weight.dtype)

    def as_linear(self) -> nn.Linear:
        """The single head of a one-head layer as an `nn.Linear` (the merged heads of an export)."""
        if self.num_heads != 1:
            raise ValueError(f"as_linear() needs one head; merge the {self.num_heads} heads first (merge()).")
        return self.merge(torch.ones(1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_heads={self.num_heads}"


def _local_dir_kwargs(path: str, kind: str, model_kwargs: dict) -> tuple[dict, torch.dtype | None]:
    """The `from_pretrained` keywords that a directory tmkd_hf wrote itself can honour: `id2label` / `label2id`
    (set on its config) and `torch_dtype` / `dtype` (returned, to cast the loaded student). Where a Hub download
    would come from (`cache_dir`, `token`, `local_files_only`, `revision="main"`) means nothing for a local
    directory; any other keyword is refused rather than silently dropped."""
    kwargs = dict(model_kwargs)
    for key in ("cache_dir", "token", "local_files_only"):
        kwargs.pop(key, None)
    revision = kwargs.pop("revision", None)
    if revision not in (None, "main"):
        raise ValueError(
            f"{path} is {kind} in a local directory: revision={revision!r} cannot be applied (a local directory has "
            "no revisions). Check out that revision, or load it from the Hub by id."
        )
    dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
    kwargs.pop("dtype", None)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if dtype == "auto":
        dtype = None  # the weights' own dtype
    unsupported = sorted(set(kwargs) - {"id2label", "label2id", "num_labels"})
    if unsupported:
        raise ValueError(
            f"{path} is {kind}; {unsupported} cannot be applied when loading it (only id2label / label2id, "
            "torch_dtype / dtype)."
        )
    return kwargs, dtype


def multihead_checkpoint_dir(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> str | None:
    """The local directory of a multi-head student (`tmkd_student.json` + weights + tokenizer): `name_or_path`
    itself, or, for a Hub id whose repo root holds `tmkd_student.json` (a published stage-1 student), the snapshot
    of the repo's root files at `revision`. `None` for anything else (a plain checkpoint, a CrossEncoder export, a
    Hub id that cannot be reached): the caller then loads it the usual way and reports its own error.

    Only the root is downloaded: a stage-1 repo also holds `merged/`, which the multi-head student does not need.
    """
    path = os.fspath(name_or_path)
    if os.path.isfile(os.path.join(path, STUDENT_CONFIG_NAME)):
        return path
    if os.path.exists(path) or not HUB_ID.fullmatch(path):
        return None
    from huggingface_hub import hf_hub_download, snapshot_download

    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "token": token}
    try:
        hf_hub_download(path, STUDENT_CONFIG_NAME, **hub_kwargs)
    except Exception:  # noqa: BLE001 - no such file or repo, offline and not cached: not a multi-head Hub student
        return None
    return snapshot_download(path, ignore_patterns=["*/*"], **hub_kwargs)


def _load_weights(path: str) -> dict[str, torch.Tensor]:
    """safetensors weights, or an error that names the file when it is missing or damaged (a copy cut short)."""
    try:
        return safetensors.torch.load_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the checkpoint's weights were not saved or copied.") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a damaged header/data
        size = os.path.getsize(path)
        raise OSError(
            f"{path} is damaged ({size} bytes; {type(err).__name__}: {err}). Copy or save the checkpoint again "
            "(a resumable run: resume from the previous checkpoint)."
        ) from None


@dataclass
class MultiHeadStudentOutput(ModelOutput):
    """Output of [`MultiHeadStudent`]: `logits` are the combined prediction, `head_logits` one row per head."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    head_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


# Extensions built on the multi-head student that change its encoder in place (`tmkd_hf.peft_student`: LoRA
# adapters) save their settings under a key of their own in tmkd_student.json and register here how to re-apply them
# to a freshly built student before a checkpoint's weights load. This module imports none of them.
_CHECKPOINT_EXTENSIONS: dict[str, Callable[[MultiHeadStudent, dict], MultiHeadStudent]] = {}


def register_checkpoint_extension(key: str, restore: Callable[[MultiHeadStudent, dict], MultiHeadStudent]) -> None:
    """Let `MultiHeadStudent.from_pretrained` reload checkpoints whose tmkd_student.json holds `key`: the student
    built from the checkpoint's config is passed, with the settings saved under `key`, to `restore`, which returns
    the student the saved weights are loaded into."""
    _CHECKPOINT_EXTENSIONS[key] = restore


class MultiHeadStudent(nn.Module):
    """A sequence classifier whose final linear layer is replicated once per teacher.

    `forward` returns `head_logits` `[batch, num_heads, num_labels]` for training and `logits`, their
    `head_weights`-weighted mean, for prediction. `merge_heads()` gives back a plain transformers model with
    identical logits; `save_pretrained` keeps every head (a training checkpoint) unless `merged=True`.

    Example:
    ```python
    >>> student = MultiHeadStudent.from_pretrained("path/to/small-bert", num_teachers=3, num_labels=2)
    >>> out = student(**tokenizer(["a question"], ["a passage"], return_tensors="pt"))
    >>> out.head_logits.shape, out.logits.shape
    (torch.Size([1, 3, 2]), torch.Size([1, 2]))
    >>> student.merge_heads().save_pretrained("student-merged")  # loads with AutoModelForSequenceClassification
    ```
    """

    # The loss is computed here (or by the trainer) per batch; it takes no `num_items_in_batch`.
    accepts_loss_kwargs = False

    def __init__(
        self,
        model: PreTrainedModel,
        num_heads: int,
        head_weights: list[float] | torch.Tensor | None = None,
        head_module: str | None = None,
        readout: str | None = None,
    ):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads (the number of teachers) must be >= 1, got {num_heads}.")
        num_labels = model.config.num_labels
        head_module = head_module or find_classification_head(model, num_labels)
        head = model.get_submodule(head_module)
        if isinstance(head, MultiHeadLinear):
            if head.num_heads != num_heads:
                raise ValueError(f"{head_module} already has {head.num_heads} heads, not {num_heads}.")
        elif isinstance(head, nn.Linear):
            _set_submodule(model, head_module, MultiHeadLinear.from_linear(head, num_heads))
        else:
            raise ValueError(f"{head_module} is a {type(head).__name__}, expected the final nn.Linear of the head.")
        readout = check_readout(readout or getattr(model.config, CONFIG_KEY, None) or "cls")
        hidden_size = getattr(model.config, "hidden_size", None)
        in_features = model.get_submodule(head_module).in_features
        if readout == "mean" and hidden_size is not None and in_features != hidden_size:
            raise ValueError(
                f"readout='mean' feeds the mean of the last hidden states (size {hidden_size}) to {head_module}, "
                f"but it takes {in_features} features. Use readout='cls' for this model."
            )
        block_sizes = getattr(model.config, "block_sizes", None) or ()
        if readout == "mean" and len(block_sizes) > 1:  # Funnel: FunnelBaseModel returns the pooled sequence
            raise ValueError(
                f"readout='mean' averages the last hidden states over the attention mask, but "
                f"{type(model).__name__} pools the sequence between its blocks (block_sizes={list(block_sizes)}): "
                "its last hidden states are shorter than the mask. Use readout='cls' (the model's own head)."
            )
        mark_readout(model.config, readout)
        self.model = model
        self.head_module = head_module
        self.readout = readout
        self.num_heads = num_heads
        self.register_buffer("head_weights", torch.full((num_heads,), 1.0 / num_heads))
        if head_weights is not None:
            self.set_head_weights(head_weights)

    # ----- construction and persistence -----

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        num_teachers: int | None = None,
        num_labels: int | None = None,
        head_weights: list[float] | None = None,
        head_module: str | None = None,
        readout: str | None = None,
        **model_kwargs,
    ) -> MultiHeadStudent:
        """Build a student from a plain checkpoint (its head is replicated) or reload a multi-head checkpoint.

        Args:
            pretrained_model_name_or_path: a Hub id or local directory. A directory saved by
                `MultiHeadStudent.save_pretrained` (or a `MultiTeacherDistillationTrainer` checkpoint), or a Hub
                repo whose root is one (a stage-1 student published by `run_qa_distill_pretrain.py --push_to_hub`;
                `revision=` picks its version), is reloaded with every head; anything else is loaded with
                `AutoModelForSequenceClassification`.
            num_teachers: number of heads; required for a plain checkpoint, checked against a multi-head one.
            num_labels: label count of the task (passed to `AutoModelForSequenceClassification`).
            head_weights: how heads are combined at inference (default: the saved weights, or equal weights).
            head_module: dotted name of the final linear layer, when the model family is not recognised.
            readout: 'cls' or 'mean' (see `tmkd_hf.readout`); default: what the checkpoint was trained with (its
                `tmkd_readout`, else its sentence-transformers pooling, else 'cls'). A CrossEncoder export of a
                mean-readout student (`modules.json`) is reloaded as a one-head mean-readout student.
            model_kwargs: forwarded to `from_pretrained` (`revision`, `id2label`, `torch_dtype`, ...).
        """
        path = str(pretrained_model_name_or_path)
        if readout is not None:
            check_readout(readout)
        if os.path.isfile(os.path.join(path, STUDENT_CONFIG_NAME)):
            return cls._from_multihead_checkpoint(path, num_teachers, num_labels, head_weights, readout, **model_kwargs)
        hub_kwargs = {k: model_kwargs.get(k) for k in ("revision", "cache_dir", "token")}
        local = multihead_checkpoint_dir(path, **hub_kwargs)
        if local is not None:  # a multi-head student on the Hub (e.g. a published stage-1 student), at `revision`
            kwargs = {k: v for k, v in model_kwargs.items() if k not in hub_kwargs}
            return cls._from_multihead_checkpoint(local, num_teachers, num_labels, head_weights, readout, **kwargs)
        if is_cross_encoder_dir(path):
            return cls._from_cross_encoder(path, num_teachers, num_labels, head_weights, readout, **model_kwargs)
        if num_teachers is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a plain checkpoint: pass num_teachers= (one head per teacher)."
            )
        if num_labels is not None:
            model_kwargs["num_labels"] = num_labels
        readout = readout or detect_readout(path, revision=model_kwargs.get("revision"))
        model = AutoModelForSequenceClassification.from_pretrained(pretrained_model_name_or_path, **model_kwargs)
        return cls(model, num_teachers, head_weights=head_weights, head_module=head_module, readout=readout)

    @classmethod
    def _from_cross_encoder(cls, path, num_teachers, num_labels, head_weights, readout, **model_kwargs):
        """A CrossEncoder (Transformer, mean Pooling, Dense) as a mean-readout student: the Dense is every head."""
        if readout == "cls":
            raise ValueError(f"{path} is a mean-pooled CrossEncoder; it cannot be read out through [CLS].")
        encoder_dir, dense = read_cross_encoder(path)
        if num_labels is not None and num_labels != dense.out_features:
            raise ValueError(f"{path} scores {dense.out_features} labels, but num_labels={num_labels} was requested.")
        model_kwargs, dtype = _local_dir_kwargs(path, "a CrossEncoder export", model_kwargs)
        config = AutoConfig.from_pretrained(encoder_dir)
        config.num_labels = dense.out_features
        for key in ("id2label", "label2id"):
            if key in model_kwargs:
                setattr(config, key, model_kwargs[key])
        _load_weights(os.path.join(encoder_dir, WEIGHTS_NAME))  # a missing or damaged file, named
        # from_pretrained, not the raw file: some families save their weights under other names than their modules'
        # (NomicBERT's `emb_ln`, GTE's `qkv_proj`) and rename them on loading.
        # Its report would call the head newly initialised; the Dense layer fills it below.
        modeling_logger = hf_logging.get_logger("transformers.modeling_utils")
        level = modeling_logger.level
        modeling_logger.setLevel(hf_logging.ERROR)
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                encoder_dir, config=config, dtype=torch.float32, output_loading_info=True
            )
        finally:
            modeling_logger.setLevel(level)
        prefix = model.base_model_prefix + "."
        missing = [k for k in info["missing_keys"] if k.startswith(prefix) and not k.endswith("position_ids")]
        unexpected = list(info["unexpected_keys"])
        if missing or unexpected:
            raise ValueError(
                f"{encoder_dir}/{WEIGHTS_NAME} does not match its config: missing {missing}, unexpected {unexpected}."
            )
        head_module = find_classification_head(model, dense.out_features)
        with torch.no_grad():
            head = model.get_submodule(head_module)
            head.weight.copy_(dense.weight)
            if head.bias is not None and dense.bias is not None:
                head.bias.copy_(dense.bias)
        student = cls(model, num_teachers or 1, head_weights=head_weights, head_module=head_module, readout="mean")
        return student.to(dtype) if dtype is not None else student

    @classmethod
    def _from_multihead_checkpoint(
        cls, path, num_teachers, num_labels, head_weights, readout, **model_kwargs
    ) -> MultiHeadStudent:
        model_kwargs, dtype = _local_dir_kwargs(path, "a multi-head checkpoint", model_kwargs)
        with open(os.path.join(path, STUDENT_CONFIG_NAME)) as f:
            meta = json.load(f)
        if num_teachers is not None and num_teachers != meta["num_heads"]:
            raise ValueError(
                f"{path} holds a student with {meta['num_heads']} heads, but num_teachers={num_teachers}. "
                "A multi-head checkpoint keeps its head count; load it with num_teachers=None."
            )
        config = AutoConfig.for_model(**meta["base_config"])
        if num_labels is not None and num_labels != config.num_labels:
            raise ValueError(f"{path} has {config.num_labels} labels, but num_labels={num_labels} was requested.")
        saved_readout = meta.get("readout", "cls")  # checkpoints from before readouts existed read [CLS]
        if readout is not None and readout != saved_readout:
            raise ValueError(
                f"{path} was trained with readout={saved_readout!r}; it cannot be reloaded with readout={readout!r}."
            )
        for key in ("id2label", "label2id"):
            if key in model_kwargs:
                setattr(config, key, model_kwargs[key])
        model = AutoModelForSequenceClassification.from_config(config)
        student = cls(model, meta["num_heads"], head_module=meta["head_module"], readout=saved_readout)
        for key, restore in _CHECKPOINT_EXTENSIONS.items():
            if meta.get(key):  # e.g. the same LoRA adapters, injected before the weights load
                student = restore(student, meta[key])
        state_dict = _load_weights(os.path.join(path, WEIGHTS_NAME))
        missing, unexpected = student.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{path} does not match its student config: missing {missing}, unexpected {unexpected}.")
        if head_weights is not None:
            student.set_head_weights(head_weights)
        return student.to(dtype) if dtype is not None else student

    def save_pretrained(
        self, save_directory: str | os.PathLike, merged: bool = False, state_dict=None, tokenizer=None, **kwargs
    ):
        """Save every head (reload with `MultiHeadStudent.from_pretrained`), or with `merged=True` the export.

        The export of a [CLS] student is a plain `AutoModelForSequenceClassification` checkpoint; that of a mean
        student a sentence-transformers `CrossEncoder` directory (`tmkd_hf.cross_encoder`). Both load without
        tmkd_hf; `tokenizer` (if given) is saved beside them.
        """
        if merged:
            merged_model = self.merge_heads()
            if self.readout == "mean":
                write_cross_encoder(
                    save_directory,
                    merged_model.model.base_model,
                    merged_model.model.get_submodule(merged_model.head_module).as_linear(),
                    tokenizer=tokenizer,
                )
                return None
            merged_model.save_pretrained(save_directory, **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(save_directory)
            return None
        os.makedirs(save_directory, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}
        safetensors.torch.save_file(state_dict, os.path.join(save_directory, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(save_directory, STUDENT_CONFIG_NAME), "w") as f:
            json.dump(self.checkpoint_config(), f, indent=2, sort_keys=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(save_directory)

    def checkpoint_config(self) -> dict:
        """What `save_pretrained` writes to tmkd_student.json (an extension adds its settings under its own key)."""
        return {
            "num_heads": self.num_heads,
            "head_module": self.head_module,
            "head_weights": self.head_weights.tolist(),
            "readout": self.readout,
            "base_config": self.model.config.to_dict(),
        }

    # ----- heads -----

    @property
    def head(self) -> MultiHeadLinear:
        return self.model.get_submodule(self.head_module)

    def set_head_weights(self, weights: list[float] | torch.Tensor) -> None:
        """Set how heads are combined at inference (non-negative, normalised to sum to 1)."""
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() != self.num_heads:
            raise ValueError(f"Got {w.numel()} head weights for a student with {self.num_heads} heads.")
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"Head weights must be finite, >= 0 and not all zero, got {w.tolist()}.")
        self.head_weights.copy_(w / w.sum())

    def combine_heads(self, head_logits: torch.Tensor) -> torch.Tensor:
        """`[..., num_heads, num_labels] -> [..., num_labels]`: the weighted mean of the heads' logits."""
        w = self.head_weights.to(head_logits.dtype)
        return torch.einsum("...hc,h->...c", head_logits, w)

    def merge_heads(self) -> PreTrainedModel | MultiHeadStudent:
        """A copy whose logits equal this student's combined logits, with the heads folded into one layer.

        [CLS] readout: a plain transformers model. Mean readout: a one-head mean-readout `MultiHeadStudent` (no
        transformers class reads out a mean); `save_pretrained(dir, merged=True)` writes it as a CrossEncoder.
        """
        merged = copy.deepcopy(self.model)
        _set_submodule(merged, self.head_module, self.head.merge(self.head_weights))
        if self.readout == "cls":
            return merged
        return MultiHeadStudent(merged, num_heads=1, head_module=self.head_module, readout="mean")

    def with_heads(self, num_heads: int) -> MultiHeadStudent:
        """A copy with `num_heads` heads, each starting from this student's combined head (e.g. a one-head teacher
        or export that a multi-teacher stage continues from)."""
        merged = copy.deepcopy(self.model)
        _set_submodule(merged, self.head_module, self.head.merge(self.head_weights))
        return MultiHeadStudent(merged, num_heads, head_module=self.head_module, readout=self.readout)

    # ----- delegation to the wrapped transformers model -----

    @property
    def config(self):
        return self.model.config

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)  # main_input_name, floating_point_ops, add_model_tags, ...

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MultiHeadStudentOutput:
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if self.readout == "mean":
            outputs = self.model.base_model(**inputs, return_dict=True)
            features = masked_mean(outputs.last_hidden_state, attention_mask)
            dropout = getattr(self.model, "dropout", None)
            features = dropout(features) if isinstance(dropout, nn.Dropout) else features
            head_logits = self.head(features)
        else:
            outputs = self.model(**inputs, return_dict=True)
            head_logits = outputs.logits  # [batch, num_heads, num_labels]
        logits = self.combine_heads(head_logits)
        loss = None
        if labels is not None:
            per_example, mask = hard_loss(logits, labels)
            loss = per_example.sum() / mask.sum().clamp_min(1)
        return MultiHeadStudentOutput(
            loss=loss,
            logits=logits,
            head_logits=head_logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
