"""bench_pool_scale.py on tiny stand-ins: bench_mpnet's tiny teachers (made by `bench_mpnet.py --teachers-only`), a
tiny sharded pool of real QNLI pairs as gzipped TSV shards, every pool kind (K shards, the old in-article pool, the
equal-size control), a stage 1 killed mid-way and resumed from its checkpoint with the numbers of an uninterrupted
run, the levers (student layers, temperature, soft loss, stage-2 alpha) run beside the default runs, and the table and
picture from the saved runs."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench_mpnet import DATA, REPO, TINY, stand_ins  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.slow,  # ~2 min: tiny teachers, then a dozen tiny students
    pytest.mark.skipif(not (DATA / "qnli" / "train.tsv").is_file(), reason=f"QNLI TSVs not found under {DATA}"),
]


def load_bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_pool_scale", REPO / "benchmarks" / "bench_pool_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does (its dataclass looks its module up there)
    spec.loader.exec_module(module)
    return module


def train_bench_teachers(out: Path, small: str, big: str) -> Path:
    """The 4 teachers as `bench_mpnet.py --teachers-only` trains them, on stand-ins, with its quick-check limits."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_mpnet.py"), "--output_dir", str(out),
                           "--backbone", small, "--mpnet_dir", big, *TINY, "--teachers-only", "--no-costs"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, stand_ins):  # noqa: F811
    return train_bench_teachers(tmp_path_factory.mktemp("mpnet") / "mpnet", *stand_ins)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two gzipped shards with the squad_pool columns, rows taken from qnli/unlabeled.tsv."""
    root = tmp_path_factory.mktemp("pool")
    with open(DATA / "qnli" / "unlabeled.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:40]
    for k, part in enumerate((rows[:24], rows[24:])):
        with gzip.open(root / f"pool-{k:02d}-of-02.tsv.gz", "wt") as f:
            f.write("idx\tquestion\tsentence\ttitle\toverlap\n")
            for r in part:
                f.write(f"{r['idx']}\t{r['question']}\t{r['sentence']}\tT\t1\n")
    return root


def arguments(out: Path, teachers: Path, shards: Path, labels: Path, small: str, *extra: str) -> list[str]:
    return ["--output_dir", str(out), "--teachers-from", str(teachers), "--pool-dir", str(shards),
            "--labels-dir", str(labels), "--pool-backend", "torch", "--backbone", small, "--max-train-rows", "32",
            "--max-eval-rows", "40", "--epochs-scale", "0.5", "--threads", "1", "--no-record", *extra]


def test_pools_resume_table_and_plot(tmp_path, teachers, shards, stand_ins, monkeypatch):  # noqa: F811
    bench = load_bench()
    from tmkd_hf import MultiTeacherDistillationTrainer

    small = stand_ins[0]
    labels = tmp_path / "labels"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = ("--rows", "TMKD_all", "TKD_mpnet", "--seeds", "1", "--stage1-epochs", "2", "--checkpoint-steps", "1")

    # every pool kind, uninterrupted
    done = tmp_path / "done"
    assert bench.main(arguments(done, teachers, shards, labels, small, "--pools", "squad1", "squad2", "qnli",
                                "squad-n8", *common)) == 0
    # the peer (sentence-transformers CrossEncoderTrainer), its learning rate chosen on validation first
    assert bench.main(arguments(done, teachers, shards, labels, small, "--pools", "squad1", "--rows", "peer_mean",
                                "--seeds", "1", "--stage1-epochs", "2", "--tune-peer", "--peer-grid", "1e-4",
                                "4e-4")) == 0
    tuning = json.loads((done / "peer" / "tuning_mean.json").read_text())
    peer_run = json.loads((done / "runs" / "peer_mean__squad1__e2__seed1.json").read_text())
    assert peer_run["peer_learning_rate"] == tuning["learning_rate"] in (1e-4, 4e-4)
    assert peer_run["stage1_rows"] == 24 and "map" in peer_run["metrics"]["test"]
    runs = {p.stem: json.loads(p.read_text()) for p in (done / "runs").glob("*__e2__seed1.json")}
    assert {r["stage1_rows"] for r in runs.values()} == {24, 40, 8, 32}  # squad1, squad2, squad-n8, qnli (32 rows)
    tmkd = runs["TMKD_all__squad2__e2__seed1"]
    assert tmkd["num_heads"] == 4 and tmkd["stage1_steps"] == 2 * 3  # 40 rows, batch 16: 3 steps per epoch
    assert runs["TKD_mpnet__squad1__e2__seed1"]["num_heads"] == 1
    # the stage-1 student is evaluated too (heads merged), and that leaves the final student as it was without it
    assert set(tmkd["stage1_metrics"]) == {"validation", "test"}
    assert 0 <= tmkd["stage1_metrics"]["test"]["accuracy"] <= 1 and "map" in tmkd["stage1_metrics"]["test"]
    evaluate, calls = bench.PoolScaleBench.evaluate, []

    def final_only(self, model):  # the run as before the stage-1 evaluation: none for the stage-1 student
        calls.append(model)
        return {} if len(calls) == 1 else evaluate(self, model)

    monkeypatch.setattr(bench.PoolScaleBench, "evaluate", final_only)
    plain = tmp_path / "plain"
    assert bench.main(arguments(plain, teachers, shards, labels, small, "--pools", "squad2", "--rows", "TMKD_all",
                                "--seeds", "1", "--stage1-epochs", "2", "--checkpoint-steps", "1")) == 0
    monkeypatch.setattr(bench.PoolScaleBench, "evaluate", evaluate)
    assert len(calls) == 2
    assert json.loads((plain / "runs" / "TMKD_all__squad2__e2__seed1.json").read_text())["metrics"] == tmkd["metrics"]
    # one cache per teacher group, one folder of logits per shard, reused across pool sizes
    for group, teachers_in_group in (("minilm", 3), ("mpnet", 1)):
        folders = sorted((labels / "squad_pool" / group / "files").iterdir())
        assert [f.name.split("-")[1] for f in folders] == ["00", "01"]
        logits = __import__("numpy").load(folders[0] / "logits.npy")
        assert logits.shape == (24, teachers_in_group, 2)
    cost = json.loads((done / "pool_labelling.json").read_text())
    assert set(cost["minilm"]) == {"pool-00-of-02.tsv.gz", "pool-01-of-02.tsv.gz"}

    # a stage 1 killed after two steps resumes from its checkpoint and ends with the same numbers
    original = MultiTeacherDistillationTrainer.training_step
    calls = {"n": 0}

    def crashing_step(self, *args, **kwargs):
        if "stage1" in self.args.output_dir:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    crashed = tmp_path / "crashed"
    one = arguments(crashed, teachers, shards, labels, small, "--pools", "squad2", "--rows", "TMKD_all", "--seeds",
                    "1", "--stage1-epochs", "2", "--checkpoint-steps", "1")
    monkeypatch.setattr(MultiTeacherDistillationTrainer, "training_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        bench.main(one)
    monkeypatch.setattr(MultiTeacherDistillationTrainer, "training_step", original)
    checkpoints = list((crashed / "work").glob("*stage1/checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2"]
    assert bench.main(one) == 0
    resumed = json.loads((crashed / "runs" / "TMKD_all__squad2__e2__seed1.json").read_text())
    assert resumed["metrics"] == tmkd["metrics"]
    assert resumed["resumed"] == ["TMKD_all__squad2__e2-seed1-stage1"]  # its seconds count only the last start
    assert "resumed" not in tmkd
    assert bench.main(["--output_dir", str(crashed), "--table-only"]) == 0
    assert "(resumed: at least) |" in (crashed / "pool_scale.md").read_text()
    assert not (crashed / "work").exists() or not list((crashed / "work").iterdir())

    # the student-layers lever: all 6 layers of the tiny backbone (the settings' student keeps 0, 1, 2), our rows and
    # the peer, in the same output_dir (the settings do not change), named apart, the default runs untouched
    before = {p.name: p.read_bytes() for p in (done / "runs").glob("*.json")}
    lever = ("--pools", "squad1", "--rows", "TMKD_all", "TKD_mpnet", "peer_mean", "--seeds", "1", "--stage1-epochs",
             "2", "--peer-learning-rate", "1e-4")
    assert bench.main(arguments(done, teachers, shards, labels, small, *lever, "--student-layers", *"012345")) == 0
    after = {p.name: p.read_bytes() for p in (done / "runs").glob("*.json")}
    assert {n: b for n, b in after.items() if n in before} == before
    assert set(after) - set(before) == {f"{row}__squad1__e2__L0-1-2-3-4-5__seed1.json"
                                        for row in ("TMKD_all", "TKD_mpnet", "peer_mean")}
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    layer = sum(p.numel() for p in BertLayer(BertConfig.from_pretrained(small)).parameters())
    for row in ("TMKD_all", "TKD_mpnet", "peer_mean"):
        six = json.loads(after[f"{row}__squad1__e2__L0-1-2-3-4-5__seed1.json"])
        three = json.loads(after[f"{row}__squad1__e2__seed1.json"])
        assert six["student_layers"] == [0, 1, 2, 3, 4, 5] and "student_layers" not in three
        assert six["student_parameters"] - three["student_parameters"] == 3 * layer  # 3 more encoder layers
    # the settings' own layers are the default runs (nothing new); a layer the backbone lacks is refused
    assert bench.main(arguments(done, teachers, shards, labels, small, *lever, "--student-layers", "0", "1", "2")) == 0
    assert {p.name for p in (done / "runs").glob("*.json")} == set(after)
    with pytest.raises(SystemExit):
        bench.main(arguments(done, teachers, shards, labels, small, *lever, "--student-layers", "0", "6"))

    # the table and the picture from the saved runs
    assert bench.main(["--output_dir", str(done), "--table-only"]) == 0
    table = (done / "pool_scale.md").read_text()
    stage1_test = 100 * tmkd["stage1_metrics"]["test"]["accuracy"]
    squad2_line = next(line for line in table.splitlines() if line.startswith("| TMKD_all | squad2"))
    assert f"| {stage1_test:.1f} | " in squad2_line
    for needle in ("| TMKD_all | squad2 | 40 | 2 | 6 | 1 (1) |", "test acc after stage 1", "| TKD_mpnet | qnli | 32 |",
                   "MPNet-base teacher",
                   "TMKD_all − TKD_mpnet", "TMKD_all − peer_mean | squad1",
                   "Labelling the pool", "TMKD_all: squad-n8 − qnli (control, equal size)",
                   "| TMKD_all | squad1 | 24 | 2 | 4 | 1 (1) |",
                   "| TMKD_all (layers 0-5) | squad1 | 24 | 2 | 4 | 1 (1) |",
                   "| TMKD_all (layers 0-5) − TMKD_all | squad1, 2 epoch(s) |",
                   "| TKD_mpnet (layers 0-5) − TKD_mpnet | squad1, 2 epoch(s) |",
                   "| peer_mean (layers 0-5) − peer_mean | squad1, 2 epoch(s) |",
                   "| TMKD_all (layers 0-5) − TKD_mpnet (layers 0-5) | squad1"):
        assert needle in table, (needle, table)
    assert (done / "pool_scale.png").stat().st_size > 10_000


def test_loss_levers(tmp_path, teachers, shards, stand_ins, monkeypatch, capsys):  # noqa: F811
    """--temperature, --soft-loss and --stage2-alpha: lever runs beside the default ones (the settings do not change),
    named, recorded, trained and tabled apart, the default runs untouched; the peers have no such loss."""
    bench = load_bench()
    from tmkd_hf import MultiTeacherDistillationTrainer

    small = stand_ins[0]
    out, labels = tmp_path / "out", tmp_path / "labels"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    received = {}  # each stage's distillation arguments, as the trainer got them
    init = MultiTeacherDistillationTrainer.__init__

    def recording_init(self, *args, **kwargs):
        given = kwargs["args"]
        received[Path(given.output_dir).name] = (given.temperature, given.soft_loss, given.alpha)
        init(self, *args, **kwargs)

    monkeypatch.setattr(MultiTeacherDistillationTrainer, "__init__", recording_init)
    common = ("--pools", "squad1", "--rows", "TMKD_all", "TKD_mpnet", "--seeds", "1", "--stage1-epochs", "1")
    assert bench.main(arguments(out, teachers, shards, labels, small, *common)) == 0
    settings = json.loads((out / "settings.json").read_text())
    t, loss, alpha = settings["temperature"], settings["soft_loss"], settings["alpha"]
    assert (t, loss, alpha) == (2.0, "kl", 0.5)
    before = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}

    levers = ("--temperature", "4", "--soft-loss", "mse", "--stage2-alpha", "1")
    assert bench.main(arguments(out, teachers, shards, labels, small, *common, *levers)) == 0
    after = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    assert {n: b for n, b in after.items() if n in before} == before
    rows = ("TMKD_all", "TKD_mpnet")
    assert set(after) - set(before) == {f"{row}__squad1__e1__T4__mse__a1__seed1.json" for row in rows}
    for row in rows:
        lever = json.loads(after[f"{row}__squad1__e1__T4__mse__a1__seed1.json"])
        default = json.loads(after[f"{row}__squad1__e1__seed1.json"])
        assert (lever["temperature"], lever["soft_loss"], lever["stage2_alpha"]) == (4.0, "mse", 1.0)
        assert lever["settings"] == default["settings"] and "student_layers" not in lever
        assert not {"temperature", "soft_loss", "stage2_alpha", "student_layers"} & set(default)
        # stage 1 soft only at the lever's temperature and loss; stage 2 with the lever's alpha
        assert received[f"{row}__squad1__e1-seed1-stage1"] == (t, loss, 1.0)
        assert received[f"{row}__squad1__e1-seed1-stage2"] == (t, loss, alpha)
        assert received[f"{row}__squad1__e1__T4__mse__a1-seed1-stage1"] == (4.0, "mse", 1.0)
        assert received[f"{row}__squad1__e1__T4__mse__a1-seed1-stage2"] == (4.0, "mse", 1.0)
    # the settings' own values are the default runs: nothing new runs
    trained = len(received)
    assert bench.main(arguments(out, teachers, shards, labels, small, *common, "--temperature", "2", "--soft-loss",
                                "kl", "--stage2-alpha", "0.5")) == 0
    assert len(received) == trained and {p.name for p in (out / "runs").glob("*.json")} == set(after)
    # the name parts in their order, with the layers lever
    every = bench.Lever(student_layers=(0, 1, 2, 3, 4, 5), temperature=4.0, soft_loss="soft_ce", stage2_alpha=0.75)
    assert bench.run_name("TMKD_all", "squad1", 1.0, every) == "TMKD_all__squad1__e1__L0-1-2-3-4-5__T4__soft_ce__a0.75"
    assert bench.row_label("TMKD_all", every) == "TMKD_all (layers 0-5, T 4, soft_ce, alpha 0.75)"

    # the peers have no temperature, soft loss or alpha; values out of range; refused before anything runs
    refused = tmp_path / "refused"
    with pytest.raises(SystemExit):
        bench.main(arguments(refused, teachers, shards, labels, small, "--rows", "TMKD_all", "peer_mean",
                             "--temperature", "4"))
    error = capsys.readouterr().err
    assert "--temperature" in error and "peer_mean" in error
    for bad in (("--temperature", "0"), ("--temperature", "-1"), ("--stage2-alpha", "1.5"), ("--soft-loss", "l1")):
        with pytest.raises(SystemExit):
            bench.main(arguments(refused, teachers, shards, labels, small, *bad))
    assert not refused.exists()

    assert bench.main(["--output_dir", str(out), "--table-only"]) == 0
    table = (out / "pool_scale.md").read_text()
    for needle in ("| TKD_mpnet | squad1 | 24 | 1 | 2 | 1 (1) |",
                   "| TKD_mpnet (T 4, mse, alpha 1) | squad1 | 24 | 1 | 2 | 1 (1) |",
                   "| TMKD_all (T 4, mse, alpha 1) | squad1 | 24 | 1 | 2 | 1 (1) |",
                   "| TKD_mpnet (T 4, mse, alpha 1) − TKD_mpnet | squad1, 1 epoch(s) |",
                   "| TMKD_all (T 4, mse, alpha 1) − TMKD_all | squad1, 1 epoch(s) |",
                   "| TMKD_all − TKD_mpnet | squad1, 1 epoch(s) |",
                   "| TMKD_all (T 4, mse, alpha 1) − TKD_mpnet (T 4, mse, alpha 1) | squad1, 1 epoch(s) |",
                   "is the --temperature, --soft-loss or --stage2-alpha lever"):
        assert needle in table, (needle, table)
    assert "--student-layers lever" not in table
    assert (out / "pool_scale.png").stat().st_size > 10_000


def test_bad_pool_names_and_missing_teachers(tmp_path, shards, stand_ins):  # noqa: F811
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--output_dir", str(tmp_path / "x"), "--pool-dir", str(shards), "--pools", "squad3"])
    with pytest.raises(SystemExit, match="not a bench_mpnet.py output_dir"):
        bench.main(["--output_dir", str(tmp_path / "x"), "--pool-dir", str(shards), "--teachers-from",
                    str(tmp_path / "nothing"), "--pools", "squad1"])


def test_label_only_for_the_minilm_group_before_mpnet_exists(tmp_path, teachers, shards, stand_ins):  # noqa: F811
    """`--label-only --rows TMKD_minilm` labels the pool with the MiniLM group alone: MPNet need not be trained."""
    bench = load_bench()
    partial = tmp_path / "partial"
    (partial / "teachers").mkdir(parents=True)
    (partial / "settings.json").write_text((teachers / "settings.json").read_text())
    for i in range(3):
        (partial / "teachers" / f"teacher_{i}").symlink_to(teachers / "teachers" / f"teacher_{i}")
    labels = tmp_path / "labels"
    args = arguments(tmp_path / "out", partial, shards, labels, stand_ins[0], "--pools", "squad2", "--label-only")
    assert bench.main([*args, "--rows", "TMKD_minilm"]) == 0
    assert len(list((labels / "squad_pool" / "minilm" / "files").iterdir())) == 2
    assert not (labels / "squad_pool" / "mpnet").exists()
    with pytest.raises(SystemExit, match="no trained teacher"):
        bench.main([*args, "--rows", "TKD_mpnet"])


def test_difference_claims_no_standard_error_from_one_seed():
    bench = load_bench()
    assert bench._difference([80.0, 82.0], [79.0, 81.0]) == "+1.0 ± 1.4"  # sqrt(2/2 + 2/2)
    assert bench._difference([80.0], [79.0, 81.0]) == "+0.0 (no SE: 1 seed)"
    assert bench._difference([80.0, 82.0], [81.0]) == "+0.0 (no SE: 1 seed)"
    assert bench._difference([80.0, 82.0], [80.5], b_fixed=True) == "+0.5 ± 1.0"  # an ensemble: one exact number
