"""How a student reads its prediction out of the encoder: through [CLS] or through the mean of the token states.

A student should read out the way its backbone was trained. BERT-style checkpoints fine-tuned for classification
train [CLS] (and the pooler on it); sentence-transformers backbones such as all-MiniLM-L6-v2 were trained on the
*mean* of the last hidden states, and their [CLS] state barely varies between examples (measured: a [CLS] readout
on such a backbone sits at chance for an epoch and leaves it or not by seed; the mean readout trains on every seed,
`benchmarks/RESULTS.md`). A sentence-transformers checkpoint says how it pools in `1_Pooling/config.json`; tmkd_hf
records its own choice in the model config as `tmkd_readout`.

This module also holds the warning for a readout whose state is nearly constant across examples: a classifier on
such features starts with the same logits for every input and has to find the signal through a tiny spread.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

READOUTS = ("cls", "mean")
CONFIG_KEY = "tmkd_readout"  # recorded in the model config by tmkd_hf (students, teachers, exports)
MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"

# A readout whose spread across examples (RMS over features of the per-feature standard deviation) is below this
# fraction of its shared part (RMS of the per-feature mean) warns. Measured at initialisation on 64 QNLI train pairs
# (tests/test_readout.py checks the first two): layers 0, 2, 4 of all-MiniLM-L6-v2 give 0.074 through [CLS] and
# the pooler, 0.71 through the mean; layers 0, 1, 2 give 0.002 and 0.74; all six layers 0.80 and 4.1.
NEARLY_CONSTANT_RATIO = 0.1


def check_readout(readout: str) -> str:
    if readout not in READOUTS:
        raise ValueError(
            f"readout must be one of {READOUTS} ('cls': [CLS] through the model's own head, 'mean': the "
            f"masked mean of the last hidden states), got {readout!r}."
        )
    return readout


def _read_json(path: str) -> dict | list | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _hub_json(repo_id: str, filename: str, revision: str | None) -> dict | list | None:
    """A small JSON file of a Hub model, or None when it has none or the Hub cannot be reached (offline)."""
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(hf_hub_download(repo_id, filename, revision=revision))
    except Exception:  # missing file, offline, no such repo: nothing says "mean", so [CLS]
        return None


def pooling_mode(pooling_config: dict) -> str | None:
    """'mean' / 'cls' / another mode from a sentence-transformers Pooling config (6.x and legacy keys)."""
    mode = pooling_config.get("pooling_mode")
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    if isinstance(mode, str):
        return {"mean_tokens": "mean", "cls_token": "cls"}.get(mode, mode)
    legacy = [k[len("pooling_mode_") :] for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v]
    legacy = [{"mean_tokens": "mean", "cls_token": "cls"}.get(m, m) for m in legacy]
    return "+".join(legacy) if legacy else None


def detect_readout(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
    """The readout a checkpoint was trained with: `tmkd_readout` in its config, else its sentence-transformers
    pooling (`1_Pooling/config.json`, located through `modules.json`), else 'cls'."""
    path = str(name_or_path)
    local = os.path.isdir(path)

    def load(filename: str):
        return _read_json(os.path.join(path, filename)) if local else _hub_json(path, filename, revision)

    config = load("config.json") or {}
    if config.get(CONFIG_KEY) in READOUTS:
        return config[CONFIG_KEY]
    pooling_dir = POOLING_DIR
    modules = load(MODULES_FILE)
    if isinstance(modules, list):
        pooling = [m for m in modules if str(m.get("type", "")).endswith("Pooling")]
        if not pooling:
            return "cls"
        pooling_dir = pooling[0].get("path") or POOLING_DIR
    elif not local and modules is None and not config:
        return "cls"  # an unreachable Hub id: nothing to read
    pooling_config = load(f"{pooling_dir}/config.json")
    if not isinstance(pooling_config, dict):
        return "cls"
    mode = pooling_mode(pooling_config)
    if mode in READOUTS:
        return mode
    if mode:
        logger.warning(
            f"{path} was trained with {mode!r} pooling, which tmkd_hf does not read out; using 'cls'. "
            "Pass readout='mean' or 'cls' to choose."
        )
    return "cls"


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `hidden` `[B, T, D]` over the non-padding positions (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


@torch.no_grad()
def readout_features(model: nn.Module, head: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The features `head` (the final linear layer) receives for `inputs`, in eval mode: what the readout sees."""
    captured = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    modes = {module: module.training for module in model.modules()}  # restored exactly, module by module
    try:
        model.eval()
        model(**inputs)
    finally:
        handle.remove()
        for module, training in modes.items():
            module.training = training
    features = captured[0]
    return features.reshape(-1, features.shape[-1]) if features.dim() == 2 else features[:, 0]


def spread_ratio(features: torch.Tensor) -> float:
    """How much `features` `[examples, dim]` vary across examples, relative to what they share:
    RMS over features of the standard deviation / RMS over features of the mean."""
    features = features.double()
    shared = features.mean(0).pow(2).mean().sqrt().clamp_min(1e-12)
    return float(features.var(0).mean().sqrt() / shared)


def warn_if_nearly_constant(model: nn.Module, head: nn.Module, inputs: dict[str, torch.Tensor], what: str) -> float:
    """Warn when the readout's state hardly varies across the examples of `inputs`; returns the spread ratio."""
    ratio = spread_ratio(readout_features(model, head, inputs))
    if ratio < NEARLY_CONSTANT_RATIO:
        readout = getattr(getattr(model, "config", None), CONFIG_KEY, None) or getattr(model, "readout", "cls")
        logger.warning(
            f"The {what}'s readout ({readout}) is nearly constant across examples: its spread is {ratio:.3f} of "
            f"its shared part (< {NEARLY_CONSTANT_RATIO}). Such a student tends to sit at chance before it learns, "
            "and whether it leaves depends on the seed. If the backbone was trained with mean pooling "
            "(sentence-transformers), use readout='mean' (MultiHeadStudent(..., readout='mean'))."
        )
    return ratio
