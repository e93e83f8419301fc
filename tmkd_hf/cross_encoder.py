"""The export of a mean-readout student: a sentence-transformers `CrossEncoder` directory, written and read here.

A question-passage relevance model on a mean-pooled backbone is a reranker, and the standard form of a reranker
on the Hub is a sentence-transformers `CrossEncoder`. sentence-transformers 6.x builds one from modules: a
feature-extraction `Transformer`, a mean `Pooling` and a `Dense` layer whose output is the scores. The student's
merged heads are that `Dense` layer exactly, so the export is

    config.json, model.safetensors, tokenizer files   the encoder (`AutoModel`), as sentence-transformers saves it
    modules.json, sentence_bert_config.json,          which modules, in which order
    config_sentence_transformers.json
    1_Pooling/config.json                             mean pooling over the non-padding tokens
    2_Dense/config.json, 2_Dense/model.safetensors    the merged heads: logits = W @ mean + b

and `CrossEncoder(dir).predict(pairs)` (or `model.predict(..., convert_to_tensor=True)`) gives the student's
logits. The files are written by tmkd_hf itself, so saving needs no sentence-transformers; the tests load them with
sentence-transformers in a process that never imports tmkd_hf. The encoder's config also carries the task's
`id2label` and `tmkd_readout: "mean"`, so `MultiHeadStudent.from_pretrained(dir)` rebuilds the same student.
"""

from __future__ import annotations

import json
import os

import safetensors.torch
import torch
from torch import nn

from .readout import CONFIG_KEY, MODULES_FILE, POOLING_DIR, _read_json, pooling_mode

DENSE_DIR = "2_Dense"
DENSE_WEIGHTS = "model.safetensors"
# sentence-transformers 6.x module classes (what `CrossEncoder(modules=[Transformer, Pooling, Dense]).save` writes)
TRANSFORMER_TYPE = "sentence_transformers.base.modules.transformer.Transformer"
POOLING_TYPE = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
DENSE_TYPE = "sentence_transformers.base.modules.dense.Dense"
IDENTITY = "torch.nn.modules.linear.Identity"


def _write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def write_cross_encoder(
    save_directory: str | os.PathLike, encoder, dense: nn.Linear, tokenizer=None, max_length: int | None = None
) -> None:
    """Write `encoder` (a transformers base model, e.g. `BertModel`) + mean pooling + `dense` as a CrossEncoder."""
    out = str(save_directory)
    os.makedirs(os.path.join(out, POOLING_DIR), exist_ok=True)
    os.makedirs(os.path.join(out, DENSE_DIR), exist_ok=True)
    encoder.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    hidden = dense.in_features
    _write_json(
        os.path.join(out, MODULES_FILE),
        [
            {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE},
            {"idx": 1, "name": "1", "path": POOLING_DIR, "type": POOLING_TYPE},
            {"idx": 2, "name": "2", "path": DENSE_DIR, "type": DENSE_TYPE},
        ],
    )
    bert_config = {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    }
    if max_length is not None:
        bert_config["max_seq_length"] = int(max_length)
    _write_json(os.path.join(out, "sentence_bert_config.json"), bert_config)
    _write_json(
        os.path.join(out, "config_sentence_transformers.json"),
        {
            "activation_fn": IDENTITY,
            "default_prompt_name": None,
            "model_type": "CrossEncoder",
            "prompts": {},
        },
    )
    _write_json(
        os.path.join(out, POOLING_DIR, "config.json"),
        {"embedding_dimension": hidden, "pooling_mode": "mean", "include_prompt": True},
    )
    _write_json(
        os.path.join(out, DENSE_DIR, "config.json"),
        {
            "in_features": hidden,
            "out_features": dense.out_features,
            "bias": dense.bias is not None,
            "activation_function": IDENTITY,
            "module_input_name": "sentence_embedding",
            "module_output_name": "scores",
        },
    )
    state = {"linear.weight": dense.weight.detach().contiguous().cpu()}
    if dense.bias is not None:
        state["linear.bias"] = dense.bias.detach().contiguous().cpu()
    safetensors.torch.save_file(state, os.path.join(out, DENSE_DIR, DENSE_WEIGHTS), metadata={"format": "pt"})


def is_cross_encoder_dir(path: str | os.PathLike) -> bool:
    """A local sentence-transformers directory with a Transformer, a Pooling and a final Dense module."""
    return _is_cross_encoder_modules(_read_json(os.path.join(str(path), MODULES_FILE)))


def cross_encoder_snapshot(repo_id: str, revision: str | None = None, **hub_kwargs) -> str | None:
    """The local snapshot of a Hub repo whose root is a CrossEncoder export (its root files and module folders,
    not `last-checkpoint/` or other extras), or `None` when the repo's root is not one, or cannot be reached: the
    caller then loads it the usual way and reports its own error. Offline, a cached snapshot is used."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        modules = _read_json(hf_hub_download(repo_id, MODULES_FILE, revision=revision, **hub_kwargs))
    except Exception:  # noqa: BLE001 - no such file or repo, offline and not cached: not a CrossEncoder on the Hub
        return None
    if not _is_cross_encoder_modules(modules):
        return None
    folders = sorted({m["path"] for m in modules if m.get("path")})
    root = snapshot_download(repo_id, revision=revision, ignore_patterns=["*/*"], **hub_kwargs)
    if folders:
        snapshot_download(repo_id, revision=revision, allow_patterns=[f"{f}/*" for f in folders], **hub_kwargs)
    return root


def _is_cross_encoder_modules(modules) -> bool:
    if not isinstance(modules, list):
        return False
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    return kinds[:1] == ["Transformer"] and "Pooling" in kinds and kinds[-1] == "Dense"


def read_cross_encoder(path: str | os.PathLike) -> tuple[str, nn.Linear]:
    """(encoder directory, the final Dense layer as `nn.Linear`) of a mean-pooled CrossEncoder directory."""
    path = str(path)
    modules = _read_json(os.path.join(path, MODULES_FILE))
    if not is_cross_encoder_dir(path):
        raise ValueError(f"{path} is not a sentence-transformers CrossEncoder (Transformer, Pooling, Dense) directory.")
    by_kind = {str(m["type"]).rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    pooling = _read_json(os.path.join(path, by_kind["Pooling"], "config.json")) or {}
    if pooling_mode(pooling) != "mean":
        raise ValueError(f"{path} pools with {pooling_mode(pooling)!r}; tmkd_hf reads CrossEncoders with mean pooling.")
    if len([m for m in modules if str(m["type"]).endswith("Dense")]) != 1:
        raise ValueError(f"{path} has more than one Dense module; tmkd_hf reads a single linear scoring layer.")
    dense_dir = os.path.join(path, by_kind["Dense"])
    dense_config = _read_json(os.path.join(dense_dir, "config.json")) or {}
    activation = dense_config.get("activation_function", IDENTITY)
    if activation != IDENTITY:
        raise ValueError(f"{path}: the Dense layer has activation {activation}; tmkd_hf reads a linear (Identity) one.")
    weights_file = os.path.join(dense_dir, DENSE_WEIGHTS)
    if os.path.isfile(weights_file):
        state = safetensors.torch.load_file(weights_file)
    else:
        state = torch.load(os.path.join(dense_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    weight = state["linear.weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="linear.bias" in state)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if linear.bias is not None:
            linear.bias.copy_(state["linear.bias"])
    return os.path.join(path, by_kind["Transformer"]) if by_kind["Transformer"] else path, linear


def mark_readout(config, readout: str) -> None:
    setattr(config, CONFIG_KEY, readout)
