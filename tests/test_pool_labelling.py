"""Labelling a pool given as files (tmkd_hf.pool + label_with_teachers' file mode), the ONNX teachers, and bad input
at scale: each case names the file (and line), and nothing finished is lost."""

from __future__ import annotations

import errno
import gzip
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pair_dataset

from tmkd_hf import label_with_teachers
from tmkd_hf import labelling as labelling_module
from tmkd_hf.labelling import FILES_DIR, read_manifest
from tmkd_hf.pool import PoolFileError, read_data_file, resolve_data_files
from tmkd_hf.soft_label_cache import CacheBusyError, cache_lock

HEADER = ["idx", "question", "sentence", "title", "overlap"]


def write_tsv_gz(path, rows, header=HEADER):
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")
    return path


def pool_rows(n, seed):
    ds = pair_dataset(n, seed=seed, with_labels=False)
    return [[str(i), q, s + ' "quoted', "T", "1"] for i, (q, s) in enumerate(zip(ds["question"], ds["sentence"]))]


@pytest.fixture
def pool(tmp_path):
    """Three gzipped TSV shards of 20, 13 and 7 rows (a quote inside every sentence: read without quoting)."""
    folder = tmp_path / "pool"
    folder.mkdir()
    for k, n in enumerate((20, 13, 7)):
        write_tsv_gz(folder / f"pool-{k:02d}-of-03.tsv.gz", pool_rows(n, seed=k))
    return folder


def as_array(labelled):
    return np.asarray(labelled.with_format("numpy")["teacher_logits"])


def count_label_shards(monkeypatch):
    calls = []
    real = labelling_module._label_shard

    def counted(*args, **kwargs):
        calls.append(len(args[2]["input_ids"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(labelling_module, "_label_shard", counted)
    return calls


# ----- reading files -----


def test_globs_lists_and_formats_read_the_same_rows(tmp_path, pool):
    files = resolve_data_files(str(pool / "*.tsv.gz"))
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"pool-{k:02d}-of-03.tsv.gz" for k in range(3)]
    assert resolve_data_files([files[2], files[0]]) == [files[2], files[0]]  # a list keeps its order
    rows = read_data_file(files[0], ("question", "sentence"), tmp_path / "a.arrow")
    assert len(rows) == 20 and rows[0]["sentence"].endswith('"quoted') and rows[0]["idx"] == 0  # a number
    # the same rows as JSON Lines (gz) and parquet
    records = rows.to_list()
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    rows.to_parquet(tmp_path / "p.parquet")
    for name in ("p.jsonl.gz", "p.parquet"):
        again = read_data_file(str(tmp_path / name), ("question", "sentence"), tmp_path / f"{name}.arrow")
        assert again.to_list() == records, name
    with pytest.raises(FileNotFoundError, match="No file matches"):
        resolve_data_files(str(pool / "*.csv.gz"))
    with pytest.raises(ValueError, match="Unsupported data file 'x.txt.gz'"):
        (tmp_path / "x.txt.gz").write_bytes(b"")
        resolve_data_files(str(tmp_path / "x.txt.gz"))
    with pytest.raises(ValueError, match="given twice"):
        resolve_data_files([files[0], files[0]])


def test_files_that_disagree_on_a_column_type_are_joined_as_text(tmp_path, teacher_dirs):
    write_tsv_gz(tmp_path / "a.tsv.gz", pool_rows(4, seed=1))  # idx 0..3: numbers
    write_tsv_gz(tmp_path / "b.tsv.gz", [["b-" + r[0], *r[1:]] for r in pool_rows(3, seed=2)])  # idx text
    labelled = label_with_teachers(str(tmp_path / "*.tsv.gz"), teacher_dirs[:1], show_progress=False)
    assert list(labelled["idx"]) == ["0", "1", "2", "3", "b-0", "b-1", "b-2"]
    assert list(labelled["overlap"]) == [1] * 7  # a number in both files stays a number


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    good = pool_rows(5, seed=1)
    cases = {
        "missing.tsv.gz": (good[:2] + [good[2][:4]] + good[3:], "line 4: 4 fields where the header has 5.*missing"),
        "extra.tsv.gz": (good[:3] + [good[3] + ["x"]], "line 5: 6 fields where the header has 5.*extra"),
        "empty.tsv.gz": (good[:1] + [[good[1][0], "  ", *good[1][2:]]], "line 3: empty 'question'"),
    }
    for name, (rows, message) in cases.items():
        write_tsv_gz(tmp_path / name, rows)
        with pytest.raises(PoolFileError, match=f"{name}, {message}"):
            read_data_file(str(tmp_path / name), ("question", "sentence"), tmp_path / f"{name}.arrow")
    write_tsv_gz(tmp_path / "cols.tsv.gz", good, header=["idx", "q", "sentence", "title", "overlap"])
    with pytest.raises(PoolFileError, match=r"cols.tsv.gz: no column \['question'\]"):
        read_data_file(str(tmp_path / "cols.tsv.gz"), ("question", "sentence"), tmp_path / "c.arrow")


def test_a_truncated_gz_shard_is_named_and_the_earlier_files_are_kept(tmp_path, pool, teacher_dirs):
    files = sorted(pool.glob("*.tsv.gz"))
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # a copy cut short
    out = tmp_path / "out"
    with pytest.raises(PoolFileError, match="pool-01-of-03.tsv.gz.*damaged or truncated"):
        label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=out, show_progress=False)
    finished = sorted(p.name for p in (out / FILES_DIR).iterdir())
    assert len(finished) == 1 and finished[0].startswith("pool-00-of-03.tsv.gz-")
    assert read_manifest(out) is None


# ----- labelling files -----


def test_files_give_the_logits_of_their_rows_in_order_and_resume_per_file(tmp_path, pool, teacher_dirs, monkeypatch):
    out = tmp_path / "out"
    labelled = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs, output_dir=out, shard_size=8,
                                   show_progress=False)  # fmt: skip
    assert len(labelled) == 40 and labelled.column_names[-1] == "teacher_logits"
    # the same rows as one in-memory dataset give the same logits, in the same order
    rows = [r for k in range(3) for r in pool_rows((20, 13, 7)[k], seed=k)]
    from datasets import Dataset

    ds = Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(HEADER)})
    direct = label_with_teachers(ds, teacher_dirs, shard_size=8, show_progress=False)
    np.testing.assert_allclose(as_array(labelled), as_array(direct), atol=1e-5)
    manifest = read_manifest(out)
    assert [s["name"] for s in manifest["source_files"]] == [f"pool-{k:02d}-of-03.tsv.gz" for k in range(3)]
    assert [s["num_rows"] for s in manifest["source_files"]] == [20, 13, 7]
    assert all(len(s["sha256"]) == 64 for s in manifest["source_files"]) and manifest["backend"] == "torch"
    assert manifest["teachers"][0]["weights_sha256"]

    calls = count_label_shards(monkeypatch)
    again = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs, output_dir=out, shard_size=8,
                                show_progress=False)  # fmt: skip
    assert calls == [] and np.array_equal(as_array(again), as_array(labelled))
    # one more file and a changed one: only those are labelled
    write_tsv_gz(pool / "pool-03-of-03.tsv.gz", pool_rows(5, seed=3))
    write_tsv_gz(pool / "pool-01-of-03.tsv.gz", pool_rows(13, seed=11))
    grown = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs, output_dir=out, shard_size=8,
                                show_progress=False)  # fmt: skip
    assert sorted(calls) == sorted([8, 5] * 3 + [5] * 3)  # pool-01 (13 rows: 8 + 5), pool-03 (5), 3 teachers
    assert len(grown) == 45
    np.testing.assert_array_equal(as_array(grown)[:20], as_array(labelled)[:20])  # pool-00 reused exactly
    assert len(list((out / FILES_DIR).glob("pool-01-of-03.tsv.gz-*"))) == 1  # the old contents' logits are gone


def test_a_copied_cache_is_reused_on_another_machine_with_teachers_elsewhere(tmp_path, pool, teacher_dirs, monkeypatch):
    out = tmp_path / "out"
    first = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:2], output_dir=out, show_progress=False)
    moved_teachers = []
    for t in teacher_dirs[:2]:
        moved_teachers.append(shutil.copytree(t, tmp_path / "elsewhere" / t.rsplit("/", 1)[-1]))
    moved_pool = shutil.copytree(pool, tmp_path / "elsewhere" / "pool")
    shutil.copytree(out / FILES_DIR, tmp_path / "copy" / FILES_DIR)  # only the per-file logits are committed
    calls = count_label_shards(monkeypatch)
    second = label_with_teachers(str(moved_pool / "*.tsv.gz"), moved_teachers, output_dir=tmp_path / "copy",
                                 show_progress=False)  # fmt: skip
    assert calls == [] and np.array_equal(as_array(first), as_array(second))


def test_retrained_teachers_relabel_with_the_reason_logged(tmp_path, pool, teacher_dirs, monkeypatch, caplog):
    from conftest import tiny_model

    out = tmp_path / "out"
    label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=out, show_progress=False)
    tiny_model("bert", seed=999, head_scale=20.0).save_pretrained(teacher_dirs[0])  # retrained: other weights
    calls = count_label_shards(monkeypatch)
    with caplog.at_level("INFO", logger="tmkd_hf.labelling"):
        label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=out, show_progress=False)
    assert len(calls) == 3
    assert any("weights of teacher(s) [0] differ" in r.getMessage() for r in caplog.records)


def test_the_disk_filling_during_a_file_keeps_finished_work_and_resumes(tmp_path, pool, teacher_dirs, monkeypatch):
    out = tmp_path / "out"
    real_save = labelling_module.np.save
    saves = {"n": 0}

    def full_disk(f, array, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 5:  # file 0: 3 shards + its logits; the first shard of file 1 finds the disk full
            f.write(b"\x93NUMPY half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(f, array, *args, **kwargs)

    monkeypatch.setattr(labelling_module.np, "save", full_disk)
    with pytest.raises(OSError, match="No space left to write .*run the same command again, it resumes"):
        label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=out, shard_size=8,
                            show_progress=False)  # fmt: skip
    assert not list(out.rglob("*.tmp")), "no half-written file is left"
    done = list((out / FILES_DIR).glob("pool-00-of-03.tsv.gz-*/logits.npy"))
    assert len(done) == 1 and np.load(done[0]).shape == (20, 1, 2)
    monkeypatch.setattr(labelling_module.np, "save", real_save)
    calls = count_label_shards(monkeypatch)
    resumed = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=out, shard_size=8,
                                  show_progress=False)  # fmt: skip
    assert sorted(calls) == [5, 7, 8]  # files 1 (8 + 5) and 2 (7); file 0 was kept
    fresh = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], shard_size=8, show_progress=False)
    np.testing.assert_array_equal(as_array(resumed), as_array(fresh))


def _hold_lock(path, seconds, ready):
    with cache_lock(path):
        ready.set()
        time.sleep(seconds)
        (Path(path) / "released").write_text("")  # the last thing done while holding the lock


def test_a_second_labelling_job_on_one_cache_waits_or_refuses(tmp_path, pool, teacher_dirs):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "out"), 3.0, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(CacheBusyError, match="being labelled by pid"):
            label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=tmp_path / "out",
                                lock_timeout=0.5, show_progress=False)  # fmt: skip
        assert not (tmp_path / "out" / FILES_DIR).exists()  # refused before touching anything
        labelled = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:1], output_dir=tmp_path / "out",
                                       show_progress=False)  # fmt: skip
        assert (tmp_path / "out" / "released").exists(), "it labelled while the other job held the cache"
        holder.join(10)
        assert holder.exitcode == 0 and len(labelled) == 40
    finally:
        holder.kill()


def test_the_backend_is_part_of_the_cache_key(tmp_path, pool, teacher_dirs, monkeypatch):
    pytest.importorskip("onnxruntime")
    out, onnx_dir = tmp_path / "out", tmp_path / "exports"
    torch_labels = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:2], output_dir=out, show_progress=False)
    calls = count_label_shards(monkeypatch)
    onnx_labels = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:2], output_dir=out, backend="onnx",
                                      onnx_dir=onnx_dir, show_progress=False)  # fmt: skip
    assert len(calls) == 3 * 2, "a torch cache is never taken for the ONNX backend's"
    np.testing.assert_allclose(as_array(onnx_labels), as_array(torch_labels), atol=1e-4)
    manifest = read_manifest(out)
    assert manifest["backend"] == "onnx"
    assert [e["file"] for e in manifest["onnx_exports"]] == ["model.onnx"] * 2
    assert all(e["max_abs_logit_diff_vs_torch"] < 1e-4 for e in manifest["onnx_exports"])
    int8 = label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:2], output_dir=out, backend="onnx-int8",
                               onnx_dir=onnx_dir, show_progress=False)  # fmt: skip
    manifest = read_manifest(out)
    assert manifest["backend"] == "onnx-int8" and manifest["onnx_exports"][0]["file"] == "model_int8.onnx"
    assert manifest["onnx_exports"][0]["quantization"]["weight_type"] in ("QInt8", "QUInt8")
    assert np.abs(as_array(int8) - as_array(torch_labels)).max() < 1.0  # 8-bit weights: close, not equal
    exports = sorted(p.name for p in onnx_dir.iterdir())
    assert len(exports) == 2  # one export per teacher, fp32 and int8 in the same folder, found again
    stamp = (onnx_dir / exports[0] / "model.onnx").stat().st_mtime_ns
    label_with_teachers(str(pool / "*.tsv.gz"), teacher_dirs[:2], output_dir=tmp_path / "other", backend="onnx",
                        onnx_dir=onnx_dir, show_progress=False)  # fmt: skip
    assert (onnx_dir / exports[0] / "model.onnx").stat().st_mtime_ns == stamp, "the export was reused"


def test_onnx_backend_on_a_dataset_and_clear_errors(tmp_path, teacher_dirs, tokenizer):
    pytest.importorskip("onnxruntime")
    ds = pair_dataset(12, seed=3)
    torch_labels = label_with_teachers(ds, teacher_dirs[:1], show_progress=False)
    from conftest import tiny_model

    model = tiny_model("bert", seed=100, head_scale=20.0)  # an in-memory teacher is saved, then exported
    onnx_labels = label_with_teachers(ds, [(model, tokenizer)], backend="onnx", onnx_dir=tmp_path / "x",
                                      show_progress=False)  # fmt: skip
    np.testing.assert_allclose(as_array(onnx_labels), as_array(torch_labels), atol=1e-4)
    with pytest.raises(ValueError, match="backend must be one of"):
        label_with_teachers(ds, teacher_dirs[:1], backend="tensorrt", show_progress=False)
    with pytest.raises(ValueError, match="dtype='bfloat16' is for the torch backend"):
        label_with_teachers(ds, teacher_dirs[:1], backend="onnx", dtype="bfloat16", show_progress=False)
    with pytest.raises(TypeError, match="datasets.Dataset .* or data files"):
        label_with_teachers({"question": ["a"]}, teacher_dirs[:1], show_progress=False)


def test_files_on_another_file_system_are_read_like_local_ones(tmp_path, teacher_dirs):
    """Any fsspec URL (a Hub dataset's files are hf://datasets/...): here fsspec's in-memory file system."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for k in range(2):
        local = write_tsv_gz(tmp_path / f"m-{k}.tsv.gz", pool_rows(5 + k, seed=k))
        fs.pipe(f"/hubpool/data/m-{k}.tsv.gz", local.read_bytes())
    files = resolve_data_files("memory://hubpool/data/*.tsv.gz")
    assert files == ["memory:///hubpool/data/m-0.tsv.gz", "memory:///hubpool/data/m-1.tsv.gz"]
    remote = label_with_teachers(files, teacher_dirs[:1], output_dir=tmp_path / "out", show_progress=False)
    local = label_with_teachers(str(tmp_path / "m-*.tsv.gz"), teacher_dirs[:1], show_progress=False)
    assert np.array_equal(as_array(remote), as_array(local)) and len(remote) == 11
    assert [f["file"] for f in read_manifest(tmp_path / "out")["source_files"]] == files


def test_int8_with_the_feed_forward_outputs_in_fp32(tmp_path, pool, teacher_dirs, monkeypatch):
    """The closer int8 backend: its own export folder and int8 file (the feed-forward output MatMuls left in fp32,
    recorded), never taken for plain int8's, and reused by a later run."""
    pytest.importorskip("onnxruntime")
    out, onnx_dir = tmp_path / "out", tmp_path / "exports"
    files = str(pool / "*.tsv.gz")
    plain = label_with_teachers(files, teacher_dirs[:1], output_dir=out, backend="onnx-int8", onnx_dir=onnx_dir,
                                show_progress=False)  # fmt: skip
    calls = count_label_shards(monkeypatch)
    mixed = label_with_teachers(files, teacher_dirs[:1], output_dir=out, backend="onnx-int8-ffn-fp32",
                                onnx_dir=onnx_dir, show_progress=False)  # fmt: skip
    assert len(calls) == 3, "plain int8's cache is never taken for this backend's"
    manifest = read_manifest(out)
    assert manifest["backend"] == "onnx-int8-ffn-fp32"
    kept = manifest["onnx_exports"][0]["quantization"]["kept_fp32"]
    num_layers = json.loads((Path(teacher_dirs[0]) / "config.json").read_text())["num_hidden_layers"]
    assert kept["requested"] == ["ffn_output"] and len(kept["nodes"]) == num_layers
    exports = sorted(p.name for p in onnx_dir.iterdir())
    assert len(exports) == 2 and exports[1] == exports[0] + "-ffnoutput-fp32"
    assert not np.array_equal(as_array(mixed), as_array(plain))  # another int8 file, other logits
    stamp = (onnx_dir / exports[1] / "model_int8.onnx").stat().st_mtime_ns
    label_with_teachers(files, teacher_dirs[:1], output_dir=tmp_path / "other", backend="onnx-int8-ffn-fp32",
                        onnx_dir=onnx_dir, show_progress=False)  # fmt: skip
    assert (onnx_dir / exports[1] / "model_int8.onnx").stat().st_mtime_ns == stamp, "the export was reused"
