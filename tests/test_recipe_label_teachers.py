"""recipes/label_teachers.py end to end in a subprocess: TSV in, save_to_disk out; 2 processes = 1 process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import pair_dataset
from datasets import load_from_disk

from tmkd_hf import label_with_teachers
from tmkd_hf.labelling import read_manifest
from tmkd_hf.soft_label_cache import LOCK_NAME

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "label_teachers.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_tsv(path: Path, n: int = 30) -> None:
    ds = pair_dataset(n, seed=21)
    lines = ["idx\tquestion\tsentence"]
    lines += [f'{i}\t{q}\t{s} "quoted"' for i, (q, s) in enumerate(zip(ds["question"], ds["sentence"]))]
    path.write_text("\n".join(lines) + "\n")


def run(cmd, cwd):
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_recipe_labels_a_tsv_file(tmp_path, teacher_dirs):
    write_tsv(tmp_path / "pairs.tsv")
    config = {
        "dataset": str(tmp_path / "pairs.tsv"),
        "teachers": teacher_dirs,
        "output_dir": str(tmp_path / "out"),
        "text_columns": ["question", "sentence"],
        "shard_size": 8,
        "batch_size": 4,
        "fixed_mmap_threshold": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = run([sys.executable, str(RECIPE), str(tmp_path / "config.json")], tmp_path)
    if platform.libc_ver()[0] == "glibc":
        assert "malloc mmap threshold fixed at 128 KiB" in done.stderr
    labelled = load_from_disk(str(tmp_path / "out"))
    assert len(labelled) == 30 and labelled[0]["sentence"].endswith('"quoted"')  # TSV read without quoting
    from datasets import Dataset

    source = Dataset.from_dict({k: list(labelled[k]) for k in ("idx", "question", "sentence")})
    expected = label_with_teachers(source, teacher_dirs, show_progress=False)
    np.testing.assert_allclose(
        np.asarray(labelled["teacher_logits"]), np.asarray(expected["teacher_logits"]), atol=1e-5
    )
    assert read_manifest(tmp_path / "out")["num_rows"] == 30
    # the same command line form works, and a second run finds the finished cache: no file of it is rewritten
    # every file but the lock, which each run takes (tmkd_hf.soft_label_cache.cache_lock)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != LOCK_NAME}
    second = run(
        [
            sys.executable,
            str(RECIPE),
            "--dataset",
            str(tmp_path / "pairs.tsv"),
            "--teachers",
            *teacher_dirs,
            "--output_dir",
            str(tmp_path / "out"),
            "--shard_size",
            "8",
            "--batch_size",
            "4",
        ],
        tmp_path,
    )
    assert "malloc mmap threshold" not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "the second run relabelled the rows"
    assert "are already in" in second.stderr, second.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "shard_size, port",
    [("5", "29535"), ("64", "29536")],  # 8 shards split over both; 1 shard, so process 1 has no work at all
)
def test_recipe_under_accelerate_two_processes(tmp_path, teacher_dirs, shard_size, port):
    write_tsv(tmp_path / "pairs.tsv", n=37)
    common = [
        "--dataset",
        str(tmp_path / "pairs.tsv"),
        "--teachers",
        *teacher_dirs,
        "--shard_size",
        shard_size,
        "--batch_size",
        "4",
    ]
    run([sys.executable, str(RECIPE), *common, "--output_dir", str(tmp_path / "one")], tmp_path)
    run(
        [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            port,
            str(RECIPE),
            *common,
            "--output_dir",
            str(tmp_path / "two"),
        ],
        tmp_path,
    )
    one, two = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    assert list(two["idx"]) == list(range(37))  # original row order
    np.testing.assert_allclose(np.asarray(two["teacher_logits"]), np.asarray(one["teacher_logits"]), atol=1e-5)


def test_recipe_labels_a_glob_of_gz_shards_with_onnx_teachers(tmp_path, teacher_dirs):
    pytest.importorskip("onnxruntime")
    import gzip

    for k in range(2):
        write_tsv(tmp_path / f"pool-{k}.tsv", n=10 + k)
        (tmp_path / f"pool-{k}.tsv.gz").write_bytes(gzip.compress((tmp_path / f"pool-{k}.tsv").read_bytes()))
    cmd = [sys.executable, str(RECIPE), "--dataset", str(tmp_path / "pool-*.tsv.gz"), "--teachers", *teacher_dirs[:2],
           "--output_dir", str(tmp_path / "out"), "--teacher_backend", "onnx", "--teacher_onnx_dir",
           str(tmp_path / "exports"), "--batch_size", "4"]  # fmt: skip
    run(cmd, tmp_path)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["backend"] == "onnx" and manifest["num_rows"] == 21
    assert [f["name"] for f in manifest["source_files"]] == ["pool-0.tsv.gz", "pool-1.tsv.gz"]
    assert len(list((tmp_path / "exports").iterdir())) == 2
    labelled = load_from_disk(str(tmp_path / "out"))
    plain = label_with_teachers([str(tmp_path / "pool-0.tsv"), str(tmp_path / "pool-1.tsv")], teacher_dirs[:2],
                                show_progress=False)  # fmt: skip
    np.testing.assert_allclose(
        np.asarray(labelled["teacher_logits"]), np.asarray(plain["teacher_logits"]), atol=1e-4
    )
