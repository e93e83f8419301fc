"""The recipe chain of "stage 1 at scale" (recipes/configs/pool_scale_*.json, the commands of recipes/configs/README.md)
is the TMKD_all run of benchmarks/bench_pool_scale.py on the first SQuAD shard, 1 epoch.

- The commands are read from the README's `pool-scale-chain` block and parsed by their recipes' own parsers, so the
  values compared are the ones a run would use (defaults included); the reference is what the bench recorded for the
  reported run (`benchmarks/runs/pool-scale/TMKD_all__squad1__e1__seed1.json` and its settings), itself checked
  against the bench's code (its command-line defaults, `pipeline_default.json` via `bench_mpnet.settings_of`, its
  constants): a drift on either side fails here.
- The chain's paths line up: teachers -> labelling -> stage 1 -> stage 2.
- Slow: the chain run with its recipes on tiny stand-ins gives the bench's teachers, soft labels and numbers.
- `run_glue_distill.py --positive_label`, which the chain needs for QNLI's MAP / MRR (the relevant label is
  entailment, id 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import keyword_dataset, load_recipe, tiny_model
from test_bench_mpnet import TINY, stand_ins  # noqa: F401  (a fixture)
from test_bench_pool_scale import arguments, shards, train_bench_teachers  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
README = CONFIGS / "README.md"
RUNS = REPO / "benchmarks" / "runs" / "pool-scale"
REFERENCE_RUN = RUNS / "TMKD_all__squad1__e1__seed1.json"  # the reported TMKD_all run on the first shard, 1 epoch
DATA = Path(os.environ.get("TMKD_DATA_DIR", REPO.parent / "shared" / "data"))
RECIPE_MODULES = {"run_glue_distill.py": "run_glue_distill", "label_teachers.py": "label_teachers",
                  "run_qa_distill_pretrain.py": "run_qa_distill_pretrain"}

needs_data = pytest.mark.skipif(
    not (DATA / "qnli" / "train.tsv").is_file() or not (DATA / "squad_pool").is_dir(),
    reason=f"QNLI / SQuAD pool not found under {DATA} (the configs read ../shared/data)",
)


# ----- the chain as documented -----


def chain_commands() -> list[tuple[str, list[str]]]:
    """(recipe file, arguments) of every `python recipes/<recipe>.py ...` line of the README's chain, in order."""
    text = README.read_text()
    block = text.split("<!-- pool-scale-chain -->", 1)[1].split("<!-- /pool-scale-chain -->", 1)[0]
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) >= 2 and words[0] == "python" and words[1].startswith("recipes/"):
            commands.append((Path(words[1]).name, words[2:]))
    return commands


def steps() -> dict[str, list]:
    """The chain's commands by step: teachers (4), label, stage1, stage2."""
    commands = chain_commands()
    scripts = [name for name, _ in commands]
    assert scripts == ["run_glue_distill.py"] * 4 + ["label_teachers.py", "run_qa_distill_pretrain.py",
                                                    "run_glue_distill.py"], scripts
    return {"teachers": [args for _, args in commands[:4]], "label": commands[4][1], "stage1": commands[5][1],
            "stage2": commands[6][1]}


def parse(script: str, argv: list[str]) -> tuple:
    """`argv` parsed as the recipe parses its command line (label_teachers.py has no parse_args of its own)."""
    recipe = load_recipe(RECIPE_MODULES[script])
    if script == "label_teachers.py":
        return recipe.parse_recipe_args(recipe.LabellingArguments, argv, script)
    return recipe.parse_args(argv)


def in_repo(path: str | os.PathLike) -> Path:
    """A config path (relative to the repository root, where the commands run) as an absolute path."""
    return (REPO / path).resolve()


# ----- the reference: what the bench recorded for the reported run, checked against the bench's code -----


def load_benchmark(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


class _Parsed(Exception):
    pass


def command_line_defaults(main, monkeypatch) -> argparse.Namespace:
    """The defaults of a bench's own command line (its `main([])` stopped right after parsing)."""
    seen = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        seen["args"] = original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    return seen["args"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_pool_scale")


@pytest.fixture(scope="module")
def reference(bench):
    """The reported run and its settings, with the bench's names for the pieces the chain needs."""
    run = json.loads(REFERENCE_RUN.read_text())
    assert json.loads((RUNS / "settings.json").read_text()) == run["settings"]  # the output_dir's settings
    match = bench.POOL_PATTERN.match(run["pool"])
    subset, heads = bench.ROW_RECIPES[run["base_row"]]
    return {
        "run": run,
        "settings": run["settings"],
        "shards": int(match["shards"]),
        # the teachers in head order: the bench concatenates its teacher groups' logits in this order
        "teachers": [i for group in bench.SUBSET_GROUPS[subset] for i in bench.GROUPS[group]],
        "heads": heads,
    }


@needs_data
def test_reference_is_what_the_bench_code_runs(bench, reference, monkeypatch):
    """The recorded settings are those the bench's code gives today (its defaults, pipeline_default.json), and the
    run is the TMKD_all row on the first shard, 1 epoch, no lever: if the bench drifts, the configs must follow."""
    mp = bench.mp
    run, settings = reference["run"], reference["settings"]
    assert (run["base_row"], run["pool"], run["stage1_epochs"], run["seed"]) == ("TMKD_all", "squad1", 1.0, 1)
    assert not set(run) & set(bench.LEVER_SETTINGS)  # the default student, not a lever run
    assert reference["heads"] == "all" and run["num_heads"] == len(reference["teachers"]) == mp.BIG + 1
    ours = command_line_defaults(bench.main, monkeypatch)
    assert settings["pool_backend"] == ours.pool_backend and run["stage1_epochs"] in ours.pool_stage1_epochs
    args = command_line_defaults(mp.main, monkeypatch)
    # as bench_mpnet.main completes its arguments; the readout and model names are detected, not set, by the bench
    args.student_layers = args.batch_size = args.max_length = None
    args.teacher_aggregation = "mean_logits"
    args.readout, args.big_teacher_readout = settings["readout"], settings["big_teacher_readout"]
    args.big_teacher_name = settings["big_teacher"]
    code = mp.settings_of(args)
    kept = set(code) - {"stage1_epochs", "max_unlabeled_rows"}  # stage 1's length is per run in bench_pool_scale
    assert {k: code[k] for k in kept} == {k: settings[k] for k in kept}


# ----- the configs against the reference -----


def shared(training_args, max_length: int) -> dict:
    return {
        "batch_size": training_args.per_device_train_batch_size,
        "warmup_steps": training_args.warmup_steps,
        "weight_decay": training_args.weight_decay,
        "group_by_length": training_args.train_sampling_strategy == "group_by_length",
        "max_length": max_length,
    }


def distillation(training_args) -> dict:
    return {"temperature": training_args.temperature, "soft_loss": training_args.soft_loss,
            "teacher_aggregation": training_args.teacher_aggregation}


def reference_shared(settings: dict) -> dict:
    return {k: settings[k] for k in ("batch_size", "warmup_steps", "weight_decay", "group_by_length", "max_length")}


def reference_distillation(settings: dict) -> dict:
    return {k: settings[k] for k in ("temperature", "soft_loss", "teacher_aggregation")}


def qnli_files(bench) -> dict[str, Path]:
    files = bench.ab.task_files(argparse.Namespace(rte=False))
    return {"train": Path(files["train"]).resolve(), "validation": Path(files["validation"]).resolve(),
            "test": Path(files["test"]).resolve()}


@pytest.fixture(scope="module")
def parsed(reference):
    """Every step of the chain parsed by its recipe, from the repository root (where the commands run)."""
    here = os.getcwd()
    os.chdir(REPO)
    try:
        chain = steps()
        return {
            "teachers": [parse("run_glue_distill.py", argv) for argv in chain["teachers"]],
            "label": parse("label_teachers.py", chain["label"])[0],
            "stage1": parse("run_qa_distill_pretrain.py", chain["stage1"]),
            "stage2": parse("run_glue_distill.py", chain["stage2"]),
        }
    finally:
        os.chdir(here)


@needs_data
def test_the_chain_uses_the_configs():
    chain = steps()
    assert [argv[0] for argv in chain["teachers"]] == ["recipes/configs/pool_scale_mpnet_teacher.json"] * 4
    assert chain["label"] == ["recipes/configs/pool_scale_label_squad1.json"]
    assert chain["stage1"] == ["recipes/configs/pool_scale_stage1_squad1.json"]
    assert chain["stage2"] == ["recipes/configs/pool_scale_stage2_qnli.json"]
    assert {p.name for p in CONFIGS.glob("pool_scale_*.json")} == {
        Path(argv[0]).name for argv in [*chain["teachers"], chain["label"], chain["stage1"], chain["stage2"]]}


@needs_data
def test_teachers_are_the_benchs(bench, reference, parsed):
    s, mp = reference["settings"], bench.mp
    by_index = {}
    for model_args, data_args, training_args, _ in parsed["teachers"]:
        index = int(Path(training_args.output_dir).name.removeprefix("teacher_"))
        by_index[index] = model_args
        assert not model_args.teachers and not model_args.teacher_logits_dir  # plain fine-tuning on the labels
        assert data_args.task_name == s["task"] and data_args.max_train_samples == s["max_train_rows"]
        files = qnli_files(bench)
        assert {k: in_repo(getattr(data_args, f"{k}_file")) for k in files} == files
        assert shared(training_args, data_args.max_seq_length) == reference_shared(s)
        if index == mp.BIG:
            assert Path(model_args.model_name_or_path).name == s["big_teacher"]
            assert (training_args.learning_rate, training_args.num_train_epochs, training_args.seed,
                    model_args.readout) == (s["big_teacher_learning_rate"], s["big_teacher_epochs"],
                                            s["big_teacher_seed"], s["big_teacher_readout"])
        else:
            assert Path(model_args.model_name_or_path).name == s["backbone"].split(" ")[0]  # all-MiniLM-L6-v2
            assert (training_args.learning_rate, training_args.num_train_epochs, training_args.seed,
                    model_args.readout) == (s["teacher_learning_rates"][index], s["teacher_epochs"],
                                            s["teacher_seeds"][index], s["readout"])
    assert sorted(by_index) == reference["teachers"] == list(range(mp.BIG + 1))
    assert len({in_repo(parsed["teachers"][i][2].output_dir) for i in range(4)}) == 4


@needs_data
def test_labelling_is_the_benchs(bench, reference, parsed, monkeypatch):
    from tmkd_hf import label_with_teachers
    from tmkd_hf.pool import resolve_data_files

    s, label = reference["settings"], parsed["label"]
    teacher_dirs = {int(Path(t[2].output_dir).name.removeprefix("teacher_")): in_repo(t[2].output_dir)
                    for t in parsed["teachers"]}
    assert [in_repo(t) for t in label.teachers] == [teacher_dirs[i] for i in reference["teachers"]]
    here = os.getcwd()
    os.chdir(REPO)
    try:
        files = [Path(f).resolve() for f in resolve_data_files(label.dataset)]
    finally:
        os.chdir(here)
    pool_dir = command_line_defaults(bench.main, monkeypatch).pool_dir  # the bench's --pool-dir
    expected = bench.shard_files(Path(pool_dir))[: reference["shards"]]
    assert files == [f.resolve() for f in expected]
    assert label.teacher_backend == s["pool_backend"]
    assert (label.batch_size, label.max_length) == (s["eval_batch_size"], s["max_length"])
    assert label.shard_size == inspect.signature(label_with_teachers).parameters["shard_size"].default
    assert label.dtype == "float32" and label.max_rows is None
    assert list(label.text_columns) == bench.ab.task_files(argparse.Namespace(rte=False))["text_columns"]


@needs_data
def test_stage1_is_the_benchs(reference, parsed):
    s, run = reference["settings"], reference["run"]
    model_args, data_args, training_args, lora_args = parsed["stage1"]
    assert in_repo(model_args.teacher_logits_dir) == in_repo(parsed["label"].output_dir)
    assert data_args.dataset is None and data_args.max_train_samples is None and not data_args.augment_copies
    assert data_args.validation_split_percentage == 0  # the bench trains on the whole pool
    backbones = {in_repo(t[0].model_name_or_path) for t in parsed["teachers"]
                 if Path(t[2].output_dir).name != "teacher_3"}
    assert {in_repo(model_args.student_init_from)} == backbones  # the student's layers: the MiniLM teachers' backbone
    assert model_args.model_name_or_path is None and not lora_args.use_peft
    assert list(model_args.student_layers) == s["student_layers"] and model_args.readout == s["readout"]
    assert training_args.alpha == 1.0  # stage 1 learns from the soft labels only, as the bench's
    assert (training_args.learning_rate, training_args.num_train_epochs, training_args.seed) == (
        s["stage1_learning_rate"], run["stage1_epochs"], run["seed"])
    assert shared(training_args, data_args.max_seq_length) == reference_shared(s)
    assert distillation(training_args) == reference_distillation(s)


@needs_data
def test_stage1_saves_every_checkpoint_steps_as_the_bench(bench, parsed, monkeypatch):
    ours = command_line_defaults(bench.main, monkeypatch)
    training_args = parsed["stage1"][2]
    assert training_args.save_strategy == "steps" and training_args.save_steps == ours.checkpoint_steps
    assert training_args.save_total_limit == 1


@needs_data
def test_stage2_is_the_benchs(bench, reference, parsed):
    s, run = reference["settings"], reference["run"]
    model_args, data_args, training_args, _ = parsed["stage2"]
    assert in_repo(model_args.model_name_or_path) == in_repo(parsed["stage1"][2].output_dir)
    assert [in_repo(t) for t in model_args.teachers] == [in_repo(t) for t in parsed["label"].teachers]
    assert model_args.per_teacher_heads is True and len(model_args.teachers) == run["num_heads"]
    # bench_mpnet labelled the QNLI splits with torch (its settings name no other backend)
    assert model_args.teacher_backend == s.get("teacher_backend", "torch") and model_args.teacher_dtype == "float32"
    assert training_args.per_device_eval_batch_size == s["eval_batch_size"]  # the on-the-fly labelling's batch
    assert data_args.task_name == s["task"] and data_args.max_train_samples == s["max_train_rows"]
    assert data_args.max_eval_samples == data_args.max_predict_samples == s["max_eval_rows"]
    files = qnli_files(bench)
    assert {k: in_repo(getattr(data_args, f"{k}_file")) for k in files} == files
    # MAP / MRR as the bench computes them: candidates grouped by question, ranked by P(entailment)
    assert data_args.group_column == bench.ab.task_files(argparse.Namespace(rte=False))["group_column"]
    assert data_args.positive_label == bench.ab.POSITIVE
    assert training_args.do_train and training_args.do_eval and training_args.do_predict
    assert (training_args.alpha, training_args.learning_rate, training_args.num_train_epochs, training_args.seed) == (
        s["alpha"], s["stage2_learning_rate"], s["stage2_epochs"], run["seed"])
    assert shared(training_args, data_args.max_seq_length) == reference_shared(s)
    assert distillation(training_args) == reference_distillation(s)


@needs_data
def test_outputs_stay_under_one_folder_of_outputs(parsed):
    folders = [t[2].output_dir for t in parsed["teachers"]] + [parsed["label"].output_dir,
                                                                parsed["label"].teacher_onnx_dir,
                                                                parsed["stage1"][2].output_dir,
                                                                parsed["stage2"][2].output_dir]
    roots = {Path(f).parts[:2] for f in folders}
    assert roots == {("outputs", "pool-scale-recipes")}
    assert len(set(folders)) == len(folders)


# ----- run_glue_distill.py --positive_label -----


def write_tsv(path: Path, header: list[str], rows: list[list]) -> str:
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]) + "\n")
    return str(path)


def grouped_qnli_rows(n: int, seed: int) -> list[list]:
    """QNLI-style rows, 4 candidate sentences per question; 'entailment' (id 0) marks the relevant ones."""
    ds = keyword_dataset(n, seed=seed)
    questions = list(ds["question"])
    return [[i, questions[i - i % 4], s, "entailment" if y else "not_entailment"]
            for i, (s, y) in enumerate(zip(ds["sentence"], ds["label"]))]


def test_positive_label_ranks_by_the_relevant_label(tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tmkd_hf.tasks import ranking_metrics

    recipe = load_recipe("run_glue_distill")
    student = tmp_path / "student"
    tiny_model("bert", seed=0).save_pretrained(student)
    tokenizer.save_pretrained(student)
    header = ["idx", "question", "sentence", "label"]
    train = write_tsv(tmp_path / "train.tsv", header, grouped_qnli_rows(32, seed=1))
    dev_rows = grouped_qnli_rows(24, seed=2)
    dev = write_tsv(tmp_path / "dev.tsv", header, dev_rows)
    common = ["--task_name", "qnli", "--train_file", train, "--validation_file", dev, "--model_name_or_path",
              str(student), "--group_column", "question", "--do_train", "--do_eval", "--use_cpu", "--report_to", "none",
              "--save_strategy", "no", "--disable_tqdm", "true", "--per_device_train_batch_size", "8",
              "--num_train_epochs", "1", "--learning_rate", "1e-3", "--seed", "0"]  # fmt: skip
    metrics = recipe.main([*common, "--positive_label", "entailment", "--output_dir", str(tmp_path / "out")])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    batch = AutoTokenizer.from_pretrained(tmp_path / "out")([r[1] for r in dev_rows], [r[2] for r in dev_rows],
                                                           padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.double()
    relevant = np.asarray([r[3] == "entailment" for r in dev_rows])
    questions = [r[1] for r in dev_rows]
    expected = ranking_metrics(torch.log_softmax(logits, -1)[:, 0].numpy(), relevant, questions)
    assert metrics["eval_map"] == pytest.approx(expected["map"], abs=1e-6)
    assert metrics["eval_mrr"] == pytest.approx(expected["mrr"], abs=1e-6)
    # QNLI's relevant label is entailment without the flag too (the task's own positive_label, not the second label)
    default = recipe.main([*common, "--output_dir", str(tmp_path / "default")])
    assert (default["eval_map"], default["eval_mrr"]) == (metrics["eval_map"], metrics["eval_mrr"])


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--positive_label", "entailment"], r"--positive_label names the relevant label of a ranking"),
        (["--group_column", "question", "--positive_label", "relevant"], r"'relevant' is not one of the labels"),
    ],
)
def test_positive_label_errors(tmp_path, tokenizer, flags, match):
    recipe = load_recipe("run_glue_distill")
    student = tmp_path / "student"
    tiny_model("bert", seed=0).save_pretrained(student)
    tokenizer.save_pretrained(student)
    rows = grouped_qnli_rows(8, seed=1)
    path = write_tsv(tmp_path / "train.tsv", ["idx", "question", "sentence", "label"], rows)
    with pytest.raises(ValueError, match=match):
        recipe.main(["--task_name", "qnli", "--train_file", path, "--validation_file", path, "--model_name_or_path",
                     str(student), "--do_train", "--do_eval", "--use_cpu", "--output_dir", str(tmp_path / "out"),
                     *flags])


# ----- the chain on tiny stand-ins: the bench's teachers, soft labels and numbers -----

@pytest.fixture(scope="module")
def mean_stand_ins(tmp_path_factory, stand_ins):  # noqa: F811
    """bench_mpnet's stand-ins, the small one (all-MiniLM-L6-v2's) with mean pooling declared as the real one has it,
    so that every model reads out the mean, as in the reported run."""
    import shutil

    small, big = stand_ins
    mean_small = tmp_path_factory.mktemp("mean") / "small-mean"
    shutil.copytree(small, mean_small)
    (mean_small / "1_Pooling").mkdir()
    (mean_small / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                      "pooling_mode_mean_tokens": True}))
    return str(mean_small), big


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, mean_stand_ins):
    """The 4 teachers as bench_mpnet.py trains them (`--teachers-only`) on the stand-ins, its quick-check limits."""
    return train_bench_teachers(tmp_path_factory.mktemp("mpnet") / "mpnet", *mean_stand_ins)


def saved_weights(folder: Path) -> dict:
    """Every tensor a saved teacher folder holds (a CrossEncoder: the encoder, and the Dense head in 2_Dense/)."""
    from safetensors.torch import load_file

    return {f"{path.relative_to(folder)}:{k}": v for path in sorted(folder.rglob("*.safetensors"))
            for k, v in load_file(path).items()}


@pytest.mark.slow  # ~30 s: bench_mpnet's tiny teachers and one bench run (subprocess), then 7 recipe runs
@needs_data
def test_the_chain_on_tiny_stand_ins_gives_the_benchs_numbers(tmp_path, bench, teachers, shards,  # noqa: F811
                                                              mean_stand_ins, monkeypatch):
    """The README's commands, with the models, pool and folders pointed at tiny stand-ins and the bench's quick-check
    limits (32 train rows, 40 evaluation rows, epochs halved), against bench_pool_scale.py on the same stand-ins
    (its teachers trained by bench_mpnet.py): the same teachers, the same pool logits, the same student numbers."""
    pytest.importorskip("onnxruntime")
    from tmkd_hf import MultiHeadStudent, load_teacher_logits

    small, big = mean_stand_ins
    backend = reference_settings()["pool_backend"]
    out = tmp_path / "bench"
    scored = []  # (bench, model) of every evaluation: the last is the final student's
    evaluate = bench.PoolScaleBench.evaluate

    def keep(self, model):
        scored.append((self, model))
        return evaluate(self, model)

    monkeypatch.setattr(bench.PoolScaleBench, "evaluate", keep)
    assert bench.main(arguments(out, teachers, shards, tmp_path / "labels", small, "--pools", "squad1", "--rows",
                                "TMKD_all", "--seeds", "1", "--stage1-epochs", "1", "--pool-backend", backend)) == 0
    run = json.loads((out / "runs" / "TMKD_all__squad1__e1__seed1.json").read_text())
    s = run["settings"]
    assert s["readout"] == s["big_teacher_readout"] == reference_settings()["readout"] == "mean"  # as reported
    limits = ["--max_train_samples", str(s["max_train_rows"]), "--max_eval_samples", str(s["max_eval_rows"]),
              "--max_predict_samples", str(s["max_eval_rows"]), "--disable_tqdm", "true"]
    chain, ours = steps(), tmp_path / "recipes"
    monkeypatch.chdir(REPO)  # the commands' own paths (configs, ../shared/data) are relative to the repository
    glue, label, stage1 = (load_recipe(n) for n in ("run_glue_distill", "label_teachers", "run_qa_distill_pretrain"))

    # 1. the teachers: the bench's weights
    teacher_dirs = {}
    for argv in chain["teachers"]:
        index = int(Path(glue.parse_args(argv)[2].output_dir).name.removeprefix("teacher_"))
        teacher_dirs[index] = str(ours / "teachers" / f"teacher_{index}")
        is_big = index == bench.mp.BIG
        epochs = s["big_teacher_epochs"] if is_big else s["teacher_epochs"]
        glue.main([*argv, "--model_name_or_path", big if is_big else small, "--output_dir", teacher_dirs[index],
                   "--num_train_epochs", str(epochs), *limits])
        theirs = saved_weights(teachers / "teachers" / f"teacher_{index}")
        mine = saved_weights(Path(teacher_dirs[index]))
        assert theirs.keys() == mine.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=f"teacher_{index} {key}")
    teacher_list = [teacher_dirs[i] for i in sorted(teacher_dirs)]

    # 2. the first shard labelled by the 4 teachers in one cache: the bench's two caches, concatenated
    first_shard = str(sorted(shards.glob("pool-*.tsv.gz"))[0])
    label.main([*chain["label"], "--dataset", first_shard, "--teachers", *teacher_list, "--output_dir",
                str(ours / "labelled"), "--teacher_onnx_dir", str(ours / "onnx")])
    labelled = np.asarray(load_teacher_logits(str(ours / "labelled"))["teacher_logits"])
    groups = [np.asarray(load_teacher_logits(str(tmp_path / "labels" / "squad_pool" / g))["teacher_logits"])
              for g in bench.SUBSET_GROUPS["all"]]
    np.testing.assert_allclose(labelled, np.concatenate(groups, axis=1), rtol=0, atol=1e-5)

    # 3.-4. stages 1 and 2: the bench's student
    stage1.main([*chain["stage1"], "--teacher_logits_dir", str(ours / "labelled"), "--student_init_from", small,
                 "--output_dir", str(ours / "stage1"), "--disable_tqdm", "true"])
    metrics = glue.main([*chain["stage2"], "--model_name_or_path", str(ours / "stage1"), "--teachers", *teacher_list,
                         "--output_dir", str(ours / "stage2"), "--num_train_epochs", str(s["stage2_epochs"]),
                         *limits])
    runner, theirs = scored[-1]
    mine = MultiHeadStudent.from_pretrained(str(ours / "stage2"), num_teachers=1)  # the saved (merged) student
    logits = {}
    for split in ("validation", "test"):
        logits[split] = [runner.pipeline.predict_logits(m, runner.tokenizer, runner.features[split], 64)
                         for m in (theirs, mine)]
        np.testing.assert_allclose(logits[split][1], logits[split][0], rtol=0, atol=1e-5)
    # scored as the bench scores: the bench's numbers, every digit
    assert evaluate(runner, mine) == run["metrics"]
    # scored by the recipe (the Trainer, in the rows' order, other batches): the same numbers, and the predictions it
    # writes are the student's, row by row (no row is a tie at float precision here)
    for split, prefix in (("validation", "eval"), ("test", "predict")):
        for key in ("accuracy", "map", "mrr"):
            assert metrics[f"{prefix}_{key}"] == pytest.approx(run["metrics"][split][key], abs=1e-9), (split, key)
    predicted = [line.split("\t")[1] for line in
                 (ours / "stage2" / "predict_results_qnli.txt").read_text().splitlines()[1:]]
    margin = np.abs(np.diff(logits["test"][0], axis=-1))[:, 0]
    names = [runner.label_names[i] for i in logits["test"][0].argmax(-1)]
    assert len(predicted) == len(names) and margin.min() > 1e-4
    assert predicted == names


def reference_settings() -> dict:
    return json.loads(REFERENCE_RUN.read_text())["settings"]
