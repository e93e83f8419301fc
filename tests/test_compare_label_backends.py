"""compare_label_backends.py on two hand-made ablation dirs: the label agreement and the paired seed differences are
the ones computed here by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

from tmkd_hf.soft_label_cache import MANIFEST_NAME

REPO = Path(__file__).resolve().parent.parent


def load():
    spec = importlib.util.spec_from_file_location("compare_label_backends",
                                                  REPO / "benchmarks" / "compare_label_backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_ablation(out: Path, backend: str, logits: np.ndarray, test_acc: list[float], val_acc: list[float]):
    settings = {"temperature": 2.0, **({"teacher_backend": backend} if backend != "torch" else {})}
    (out / "runs").mkdir(parents=True)
    (out / "settings.json").write_text(json.dumps(settings))
    Dataset.from_dict({"teacher_logits": logits.tolist()}).save_to_disk(str(out / "labelled" / "train"))
    Dataset.from_dict({"label": [0, 1], "teacher_logits": logits.tolist()}).save_to_disk(str(out / "labelled" / "test"))
    for split in ("train", "test"):  # finished caches (a cache still being written has no manifest: left out)
        (out / "labelled" / split / MANIFEST_NAME).write_text("{}")
    (out / "labelled" / "pool").mkdir()
    for seed, (t, v) in enumerate(zip(test_acc, val_acc), start=1):
        run = {"row": "TMKD", "seed": seed, "metrics": {"test": {"accuracy": t}, "validation": {"accuracy": v}}}
        (out / "runs" / f"TMKD__seed{seed}.json").write_text(json.dumps(run))


def test_label_agreement_and_paired_differences(tmp_path):
    module = load()
    a = np.array([[[1.0, -1.0], [0.5, 0.0]], [[-2.0, 2.0], [0.0, 0.1]]])
    b = a.copy()
    b[1, 1] = [0.2, 0.1]  # one teacher's row changes its argmax: 3 of 4 argmaxes agree
    make_ablation(tmp_path / "fp32", "torch", a, [0.80, 0.79, 0.81], [0.83, 0.82, 0.84])
    make_ablation(tmp_path / "int8", "onnx-int8", b, [0.81, 0.79, 0.80], [0.83, 0.83, 0.84])

    m = module.label_agreement(a, b, temperature=2.0)
    assert m["max_abs"] == pytest.approx(0.2) and m["mean_abs"] == pytest.approx(0.2 / 8)
    assert m["argmax_agreement"] == 0.75
    pa = np.exp(np.array([0.0, 0.1]) / 2) / np.exp(np.array([0.0, 0.1]) / 2).sum()
    pb = np.exp(np.array([0.2, 0.1]) / 2) / np.exp(np.array([0.2, 0.1]) / 2).sum()
    assert m["mean_kl"] == pytest.approx((pa * np.log(pa / pb)).sum() / 4)

    table = module.compare(tmp_path / "fp32", tmp_path / "int8", ["TMKD"])
    assert "| train | 2 | 2 | 0.2000 | 0.0250 | 75.00 % |" in table
    assert "| 1 | 83.0 | 83.0 | 80.0 | 81.0 | +1.0 |" in table
    # test differences +1, 0, -1: mean 0, sd 1, paired SE 1/sqrt(3)
    assert f"paired +0.00 ± {1 / math.sqrt(3):.2f} (SE)" in table
    assert "onnx-int8 − torch" in table
    # the teachers' accuracy on test (labels 0, 1): fp32 teacher 1 says 0 (0.5 > 0.0) then 1 (0.1 > 0.0): 100 %;
    # int8 teacher 1 says 0 then 0: 50 %; the ensembles agree with the labels in both
    assert "| test | torch | 100.0 | 100.0 | 100.0 |" in table
    assert "| test | onnx-int8 | 100.0 | 50.0 | 100.0 |" in table


def test_refuses_a_dir_that_is_not_an_ablation(tmp_path):
    module = load()
    with pytest.raises(SystemExit):
        module.main([str(tmp_path), str(tmp_path), "--no-record"])
