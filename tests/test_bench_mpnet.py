"""bench_mpnet.py end to end on tiny stand-ins: a 6-layer BERT for the MiniLM teachers and the student, a 2-layer
MPNet with a tokenizer of its own (other ids, mean pooling declared as all-mpnet-base-v2 does) for the big teacher,
a few real QNLI rows; in a subprocess, as a user runs it, never writing to RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast, MPNetConfig, MPNetModel

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TMKD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
TINY = ("--max-train-rows", "32", "--max-unlabeled-rows", "32", "--max-eval-rows", "40", "--epochs-scale", "0.5",
        "--threads", "1", "--no-record")

pytestmark = pytest.mark.skipif(
    not (DATA / "qnli" / "train.tsv").is_file(), reason=f"QNLI TSVs not found under {DATA} (set TMKD_DATA_DIR)"
)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("stand-ins")
    torch.manual_seed(0)
    vocab_size = max(tokenizer.get_vocab().values()) + 1
    small = root / "small"
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(small)
    tokenizer.save_pretrained(small)
    # the big teacher: another architecture, another vocabulary order (so other ids for the same words), mean pooling
    vocab = sorted(tokenizer.get_vocab(), key=lambda t: tokenizer.get_vocab()[t])
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [t for t in vocab if t not in special][::-1]
    big_tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(special + words)}, do_lower_case=True)
    assert big_tokenizer("city")["input_ids"] != tokenizer("city")["input_ids"]
    big = root / "tiny-mpnet"
    MPNetModel(MPNetConfig(vocab_size=len(special) + len(words), hidden_size=48, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=37, pad_token_id=0)).save_pretrained(big)
    big_tokenizer.save_pretrained(big)
    (big / "1_Pooling").mkdir()
    (big / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 48,
                                                               "pooling_mode_mean_tokens": True}))
    return str(small), str(big)


def bench(out: Path, stand_ins, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    small, big = stand_ins
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_mpnet.py"), "--output_dir", str(out),
                           "--backbone", small, "--mpnet_dir", big, *TINY, *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.slow  # ~2 min alone: five subprocess runs, teachers included
def test_big_teacher_with_its_own_tokenizer_every_row_costs_and_resume(tmp_path, stand_ins):
    out = tmp_path / "mpnet"
    rows = ("--rows", "labels_only", "TMKD_all", "TMKD_all_weighted", "TKD_mpnet", "--seeds", "1")
    first = bench(out, stand_ins, *rows, "--stop-after", "1", check=False)
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    assert "big teacher" in first.stdout and "(readout mean)" in first.stdout
    big = json.loads((out / "teachers" / "teacher_3" / "config.json").read_text())
    assert big["model_type"] == "mpnet"
    # the big teacher keeps its own tokenizer: its saved vocabulary is the reordered one
    saved = AutoTokenizer.from_pretrained(out / "teachers" / "teacher_3")
    assert saved("city river")["input_ids"] == AutoTokenizer.from_pretrained(stand_ins[1])("city river")["input_ids"]
    assert saved("city river")["input_ids"] != AutoTokenizer.from_pretrained(stand_ins[0])("city river")["input_ids"]
    names = {p.name for p in (out / "runs").glob("*.json")}
    assert {"teacher_0.json", "teacher_3.json", "ensemble.json", "ensemble_minilm.json", "ensemble_weighted.json",
            "majority.json", "labels_only__seed1.json"} == names - {"teacher_1.json", "teacher_2.json"}

    costs = json.loads((out / "costs.json").read_text())
    assert set(costs["labelling_seconds"]) == {"minilm", "big"}
    assert set(costs["labelling_seconds"]["big"]) == {"train", "validation", "test", "pool"}
    speed = costs["inference"]["examples_per_second"]
    assert {"student", "teacher_0", "teacher_3", "ensemble", "ensemble_minilm"} <= set(speed)
    assert speed["ensemble"] < speed["ensemble_minilm"]  # one more member, never faster
    assert costs["inference"]["layers"] == {"student": 3, "teacher_0": 6, "teacher_1": 6, "teacher_2": 6,
                                            "teacher_3": 2}
    assert costs["training_step"]["milliseconds"]["teacher_3"] > 0
    assert all(v > 0 for v in costs["teacher_train_seconds"].values())

    second = bench(out, stand_ins, *rows)
    assert "skip labels_only seed 1: done" in second.stdout and "teacher_3 (tiny-mpnet): reusing" in second.stdout
    record = {r: json.loads((out / "runs" / f"{r}__seed1.json").read_text())
              for r in ("TMKD_all", "TMKD_all_weighted", "TKD_mpnet")}
    assert record["TMKD_all"]["num_heads"] == 4 and record["TKD_mpnet"]["num_heads"] == 1
    assert record["TMKD_all"]["stage1_rows"] == 32 and record["TKD_mpnet"]["stage1_rows"] == 32
    assert json.loads((out / "costs.json").read_text()) == costs  # measured once, kept on resume
    table = (out / "mpnet.md").read_text()
    assert "| teacher_3 | tiny-mpnet, seed 1, lr 3e-05, 1 epochs |" in table
    assert "| ensemble_minilm | mean of the 3 MiniLM teachers' probabilities | 1 |" in table
    assert "| TMKD_all_weighted | TMKD_all, teacher_weights: MPNet 0.5, each MiniLM 0.167 | 1 (seeds 1) |" in table
    assert "| MKD_all | all 4 teachers, one head each, stage 2 only | 0 |" in table
    assert "| TMKD_all − TMKD_minilm |" not in table  # no TMKD_minilm runs: no difference to show
    assert "| TMKD_all_weighted − TMKD_all | " in table and "| TMKD_all_weighted − ensemble_weighted | " in table
    assert "| ensemble_weighted | all 4 teachers' probabilities weighted as TMKD_all_weighted's (MPNet 0.5) | 1 |" \
        in table
    assert "| teacher_3 | 2 | " in table and "Online with the 3 MiniLM teachers:" in table

    # another output reuses these MiniLM teachers (symlinked, not retrained) and trains its own big teacher
    other = tmp_path / "reuse"
    third = bench(other, stand_ins, "--minilm_teachers", str(out), "--rows", "labels_only", "--seeds", "1",
                  "--no-costs")
    assert "teacher_0: reusing" in third.stdout
    assert (other / "teachers" / "teacher_0").is_symlink()
    assert not (other / "costs.json").exists() or "inference" not in json.loads((other / "costs.json").read_text())
    refused = bench(tmp_path / "refused", stand_ins, "--minilm_teachers", str(out), "--max-train-rows", "16",
                    "--rows", "labels_only", "--seeds", "1", check=False)
    assert refused.returncode != 0 and "trained with other settings" in refused.stderr


@pytest.mark.slow  # ~2 min alone: an ablation and two bench runs, teachers included
def test_rows_without_the_big_teacher_are_the_ablations_runs(tmp_path, stand_ins):
    """labels_only and TMKD_minilm never see the MPNet teacher: run here they give the ablation's metrics exactly
    (same settings, same MiniLM teachers), which is what lets `--minilm-runs` copy them; a copy says where it came
    from; an ablation with other settings or other teachers is refused."""
    import shutil

    small, _ = stand_ins
    abl = tmp_path / "ablation"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_ablation.py"), "--output_dir", str(abl),
                    "--backbone", small, *TINY, "--rows", "labels_only", "TMKD", "--seeds", "1"],
                   check=True, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)  # fmt: skip
    theirs = {row: json.loads((abl / "runs" / f"{row}__seed1.json").read_text()) for row in ("labels_only", "TMKD")}

    ran = tmp_path / "ran"  # run here: the same numbers
    bench(ran, stand_ins, "--minilm_teachers", str(abl), "--rows", "TMKD_minilm", "--seeds", "1", "--no-costs")
    assert json.loads((ran / "runs" / "TMKD_minilm__seed1.json").read_text())["metrics"] == theirs["TMKD"]["metrics"]

    copied = tmp_path / "copied"
    proc = bench(copied, stand_ins, "--minilm_teachers", str(abl), "--minilm-runs", str(abl),
                 "--rows", "labels_only", "TMKD_minilm", "TMKD_all", "--seeds", "1", "--no-costs")  # fmt: skip
    assert "reused from" in proc.stdout and "start TMKD_minilm" not in proc.stdout and "start labels_only" not in \
        proc.stdout and "start TMKD_all seed 1" in proc.stdout
    for row, source in (("labels_only", "labels_only"), ("TMKD_minilm", "TMKD")):
        run = json.loads((copied / "runs" / f"{row}__seed1.json").read_text())
        assert run["metrics"] == theirs[source]["metrics"] and run["row"] == row
        assert run["reused_from"] == {"output_dir": "ablation", "row": source}
    assert "| TMKD_all − TMKD_minilm |" in (copied / "mpnet.md").read_text()

    other = tmp_path / "other-settings"
    shutil.copytree(abl, other, symlinks=True)
    settings = json.loads((other / "settings.json").read_text())
    (other / "settings.json").write_text(json.dumps({**settings, "alpha": 0.7}))
    refused = bench(tmp_path / "refused", stand_ins, "--minilm_teachers", str(abl), "--minilm-runs", str(other),
                    "--rows", "labels_only", "--seeds", "1", "--no-costs", check=False)  # fmt: skip
    assert refused.returncode != 0 and "made with other settings ({'alpha': (0.7, 0.5)}" in refused.stderr
    (other / "settings.json").write_text(json.dumps(settings))  # the right settings, but copies of the teachers
    refused = bench(tmp_path / "refused2", stand_ins, "--minilm_teachers", str(abl), "--minilm-runs", str(other),
                    "--rows", "labels_only", "--seeds", "1", "--no-costs", check=False)  # fmt: skip
    assert refused.returncode != 0 and "is not the one used here" in refused.stderr


@pytest.mark.slow  # ~1 min alone: four tiny teachers trained and labelled, no student
def test_teachers_only_on_rte_says_whether_there_is_anything_to_distil(tmp_path, stand_ins):
    """`--teachers-only` trains and labels the teachers (RTE here: no validation split, dev shown as test), writes
    their rows and the ensembles' and stops before any student: the cheap first look at a task."""
    out = tmp_path / "rte"
    proc = bench(out, stand_ins, "--rte", "--teachers-only", "--no-costs")
    assert "start " not in proc.stdout  # no student row ran
    names = {p.name for p in (out / "runs").glob("*.json")}
    assert names == {"majority.json", "teacher_0.json", "teacher_1.json", "teacher_2.json", "teacher_3.json",
                     "ensemble.json", "ensemble_minilm.json", "ensemble_weighted.json"}
    assert json.loads((out / "settings.json").read_text())["task"] == "rte"
    big = json.loads((out / "runs" / "teacher_3.json").read_text())
    assert set(big["metrics"]) == {"test"} and 0.0 <= big["metrics"]["test"]["accuracy"] <= 1.0
    table = (out / "mpnet.md").read_text()
    assert "dev (as test) acc" in table and "| teacher_3 | tiny-mpnet, seed 1, lr 3e-05, 1 epochs | 1 |" in table
    assert "| TMKD_all | TMKD, all 4 teachers (one head each) | 0 |" in table
    # the students can follow in the same output_dir: the teachers and their soft labels are reused
    again = bench(out, stand_ins, "--rte", "--rows", "labels_only", "--seeds", "1", "--no-costs")
    assert "teacher_3 (tiny-mpnet): reusing" in again.stdout and "start labels_only seed 1" in again.stdout
