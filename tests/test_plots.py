"""The pictures (offline, no training): the pipeline's accuracy_vs_speed.png, the ablation's ablation.png and
pool_curve.png from saved run files, the card embedding the picture, and the skip without matplotlib."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402  (matplotlib's own dependency)

from tmkd_hf import plots  # noqa: E402
from tmkd_hf.model_card import SpeedMeasurement, StudentCardData, write_model_card  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURE_LINK = "![accuracy vs speed](accuracy_vs_speed.png)"


def assert_png(path: Path) -> None:
    """A real picture: the PNG signature, and PIL reads back an image of a useful size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.load()
        assert image.width >= 300 and image.height >= 200, (path, image.size)


def scatter_points(figure) -> dict[str, int]:
    """Points per scatter series, by the series' gid."""
    return {c.get_gid(): len(c.get_offsets()) for c in figure.axes[0].collections if c.get_gid()}


def line(figure, gid: str):
    (found,) = [artist for artist in figure.axes[0].lines if artist.get_gid() == gid]
    return found


def pipeline_results() -> dict:
    """A pipeline run's `results` as run_tmkd_pipeline writes them (the parts the picture reads)."""
    return {
        "accuracy": {
            "validation": {"tmkd_student": 0.8},
            "test": {
                "teacher_0": 0.80, "teacher_1": 0.79, "teacher_2": 0.81, "teacher_ensemble": 0.82,
                "tmkd_student": 0.78, "tmkd_student_onnx": 0.775, "tmkd_stage1_only": 0.70,
                "labels_only_student": 0.60, "majority_class": 0.49,
            },
        },
        "majority_label": "entailment",
        "speed": {
            "examples": 24, "batch_size": 32, "machine": "test CPU, 2 CPU cores",
            "teacher_examples_per_s": 80.0, "ensemble_examples_per_s": 26.8, "student_examples_per_s": 160.0,
            # an exported format recorded beside the others gets its own point
            "examples_per_s": {"teacher_0": 80.0, "teacher_1": 81.0, "teacher_2": 79.5, "teacher_ensemble": 26.8,
                               "tmkd_student": 160.0, "tmkd_student_onnx": 240.0},
            "same_architecture_as": {"labels_only_student": "tmkd_student"},
        },
    }


def test_accuracy_vs_speed_picture_has_one_point_per_timed_model(tmp_path):
    results = pipeline_results()
    paths = [tmp_path / "accuracy_vs_speed.png", tmp_path / "student" / "accuracy_vs_speed.png"]
    figure = plots.plot_accuracy_vs_speed(results, save_to=paths)
    for path in paths:
        assert_png(path)
    # every timed model once; the labels-only student at the student's speed (its architecture); the stage-1-only
    # student has an accuracy but no throughput and no same-architecture record: left out, not invented
    timed = ["teacher_0", "teacher_1", "teacher_2", "teacher_ensemble", "tmkd_student", "tmkd_student_onnx"]
    assert scatter_points(figure) == {name: 1 for name in [*timed, "labels_only_student"]}
    by_model = {c.get_gid(): c for c in figure.axes[0].collections}
    for name in timed:
        expected = (results["speed"]["examples_per_s"][name], 100 * results["accuracy"]["test"][name])
        assert tuple(by_model[name].get_offsets()[0]) == pytest.approx(expected)
    labels_only = by_model["labels_only_student"]
    assert tuple(labels_only.get_offsets()[0]) == pytest.approx((160.0, 60.0))
    assert len(labels_only.get_facecolors()) == 0 < len(by_model["tmkd_student"].get_facecolors())  # hollow: untimed
    assert figure.axes[0].get_xscale() == "log"
    assert list(line(figure, "majority_class").get_ydata()) == pytest.approx([49.0, 49.0])
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert len(labels) == 7 and any(t.startswith("labels_only_student\n(not timed: tmkd_student's") for t in labels)


def test_accuracy_vs_speed_from_results_without_per_model_speeds():
    """Results written before per-model throughputs were recorded: only the three models results.md timed."""
    results = pipeline_results()
    for key in ("examples_per_s", "same_architecture_as"):
        del results["speed"][key]
    figure = plots.plot_accuracy_vs_speed(results)
    assert scatter_points(figure) == {"teacher_0": 1, "teacher_ensemble": 1, "tmkd_student": 1}


def write_run(out: Path, row: str, seed: int | None, test_accuracy: float, **extra) -> None:
    """One run file as bench_ablation.save_run writes it (the fields its table and pictures read)."""
    settings = {
        "task": "qnli", "backbone": "tiny", "student_layers": [0, 1, 2], "max_train_rows": 40,
        "max_unlabeled_rows": 40, "max_eval_rows": 20, "max_length": 64, "teacher_seeds": [1, 2],
        "teacher_learning_rates": [1e-4, 8e-5], "teacher_epochs": 1.0, "stage1_epochs": 1.0,
        "stage1_learning_rate": 2e-4, "stage2_epochs": 1.0, "stage2_learning_rate": 2e-4, "alpha": 0.5,
        "temperature": 2.0, "soft_loss": "kl", "teacher_aggregation": "mean_logits", "batch_size": 8,
        "eval_batch_size": 16, "warmup_steps": 2, "weight_decay": 0.01, "group_by_length": True, "readout": "mean",
    }
    name = row if seed is None else f"{row}__seed{seed}"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    metrics = {split: {"accuracy": test_accuracy} for split in ("validation", "test")}
    (out / "runs" / f"{name}.json").write_text(json.dumps(
        {"row": row, "seed": seed, "metrics": metrics, "seconds": {}, "settings": settings, **extra}))


@pytest.fixture
def bench_ablation():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_ablation

        yield bench_ablation
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_ablation_pictures_from_saved_runs(tmp_path, bench_ablation, capsys):
    out = tmp_path / "ablation"
    write_run(out, "teacher_0", None, 0.80)
    write_run(out, "teacher_1", None, 0.78)
    write_run(out, "ensemble", None, 0.82)
    write_run(out, "majority", None, 0.50)
    students = {"labels_only": [0.60, 0.62, 0.64], "MKD": [0.70, 0.72], "TMKD": [0.75, 0.76, 0.80]}
    for row, accuracies in students.items():
        for seed, accuracy in enumerate(accuracies, start=1):
            write_run(out, row, seed, accuracy, pool_percent=100 if row == "TMKD" else 0)
    for seed, accuracy in ((1, 0.73), (2, 0.74)):
        write_run(out, "TMKD_pool50", seed, accuracy, pool_percent=50)

    # the table step writes them, --table-only included
    table_only = ["--output_dir", str(out), "--table-only", "--pool-percents", "0", "25", "50", "100"]
    assert bench_ablation.main(table_only) == 0
    assert "| TMKD |" in capsys.readouterr().out and (out / "ablation.md").is_file()
    for name in ("ablation.png", "pool_curve.png"):
        assert_png(out / name)

    figures = bench_ablation.write_plots(out, [0, 25, 50, 100])
    ablation = figures["ablation.png"]
    assert scatter_points(ablation) == {"seeds": 8}  # every student run a dot; TMKD_pool50 is the curve's
    means = line(ablation, "means")
    assert list(means.get_ydata()) == pytest.approx([62.0, 71.0, 77.0])  # labels_only, MKD, TMKD, in table order
    assert [t.get_text() for t in ablation.axes[0].get_xticklabels()] == ["labels_only", "MKD", "TMKD"]
    gids = [(a.get_gid() or "", a) for a in ablation.axes[0].lines]
    references = {gid: a.get_ydata()[0] for gid, a in gids if gid.startswith("reference:")}
    assert references == pytest.approx({"reference:teacher_0": 80.0, "reference:teacher_1": 78.0,
                                        "reference:ensemble": 82.0, "reference:majority": 50.0})

    curve = figures["pool_curve.png"]
    assert scatter_points(curve) == {"seeds": 7}  # MKD (0 %) 2 + TMKD_pool50 2 + TMKD (100 %) 3
    means = line(curve, "means")
    assert list(means.get_xdata()) == [0, 50, 100]  # 25 % has no runs: no point
    assert list(means.get_ydata()) == pytest.approx([71.0, 73.5, 77.0])


def test_ablation_without_pool_runs_draws_no_curve(tmp_path, bench_ablation):
    out = tmp_path / "ablation"
    write_run(out, "labels_only", 1, 0.6)
    figures = bench_ablation.write_plots(out, [25, 50])
    assert set(figures) == {"ablation.png"} and not (out / "pool_curve.png").exists()
    assert scatter_points(figures["ablation.png"]) == {"seeds": 1}


def test_card_embeds_the_picture_only_when_it_is_in_the_folder(tmp_path):
    data = StudentCardData(model_id="me/student", speed=SpeedMeasurement(156.8, 79.2))
    without = write_model_card(tmp_path, data)
    assert PICTURE_LINK not in without.text and "accuracy_vs_speed" not in without.text
    plots.plot_accuracy_vs_speed(pipeline_results(), save_to=[tmp_path / "accuracy_vs_speed.png"])
    with_picture = write_model_card(tmp_path, data)
    assert PICTURE_LINK in with_picture.text
    assert with_picture.text.index("## Inference speed") < with_picture.text.index(PICTURE_LINK)
    assert PICTURE_LINK in (tmp_path / "README.md").read_text()
    # a card rendered without its folder does not know of any picture
    from tmkd_hf.model_card import render_model_card

    assert PICTURE_LINK not in render_model_card(data).text


def test_without_matplotlib_the_module_imports_and_callers_skip_with_a_warning(
    tmp_path, monkeypatch, caplog, bench_ablation, capsys
):
    recipe_spec = importlib.util.spec_from_file_location("run_tmkd_pipeline", REPO / "recipes" / "run_tmkd_pipeline.py")
    recipe = importlib.util.module_from_spec(recipe_spec)
    recipe_spec.loader.exec_module(recipe)
    for name in {"matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))}:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    spec = importlib.util.spec_from_file_location("plots_without_matplotlib", REPO / "tmkd_hf" / "plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importable: matplotlib is only imported when drawing
    with pytest.raises(ImportError, match=r'pip install "tmkd_hf\[plots\]"'):
        module.plot_accuracy_vs_speed(pipeline_results())
    with pytest.raises(plots.MatplotlibMissing):
        plots.plot_pool_curve({0: [0.5]})

    # the pipeline's picture step warns and goes on
    with caplog.at_level(logging.WARNING, logger="run_tmkd_pipeline"):
        assert recipe.write_accuracy_vs_speed_picture(pipeline_results(), [str(tmp_path)]) == []
    assert "tmkd_hf[plots]" in caplog.text and not os.path.exists(tmp_path / "accuracy_vs_speed.png")

    # and so does the ablation's
    write_run(tmp_path, "labels_only", 1, 0.6)
    assert bench_ablation.write_plots(tmp_path, [0]) == {}
    assert "tmkd_hf[plots]" in capsys.readouterr().out and not (tmp_path / "ablation.png").exists()
