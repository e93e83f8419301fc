"""Export for inference: a merged student as one ONNX graph (fp32, and int8 weights), or as an int8 torch module.

`export_onnx(student_dir, out_dir, quantize=True)` writes

    model.onnx          the whole classifier, token ids in, logits out (for a mean-readout CrossEncoder export the
                        mean pooling and the Dense layer of merged heads are inside the graph); batch and sequence
                        axes are dynamic
    model_int8.onnx     the same graph with 8-bit weights (onnxruntime dynamic quantization: signed weights where
                        they do not saturate on this CPU, else unsigned; one scale per output channel; activations
                        quantized on the fly), with `quantize=True`
    onnx_export.json    the inputs and outputs, the labels, how the files were made and how far their logits are
                        from PyTorch's on a check batch
    tokenizer files, config.json (the labels), so the folder can be pushed beside the model and used on its own

Why the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) by default: on BERT-style students in both
readouts it gives the same logits as the torch.export-based exporter (both within 1e-7 of PyTorch), needs no
onnxscript, and writes about half the file (a 2-layer, 32-wide BERT: 0.19 MB against 0.43 MB, the same parameter
count), with no torch.export tracing step to fail. It is deprecated upstream but present in every torch the
package supports (`torch<2.14`); `dynamo=True` selects the torch.export-based exporter (needs `pip install
onnxscript`). Either way the export is checked: the graph is run by onnxruntime on a batch of another
size and length than the one it was traced with, and a difference to PyTorch above `EXPORT_TOLERANCE` is an error.

`OnnxClassifier(out_dir)` runs the exported graph with onnxruntime; `quantize_torch_int8(student_dir)` is the int8
route without onnxruntime (torch dynamic quantization of every `nn.Linear`). onnx and onnxruntime are an optional
extra (`pip install "tmkd_hf[onnx]"`): this module imports without them and says what to install when they are
needed.

Why `weight_type="auto"` by default: onnxruntime has two int8 kernels for these graphs, and neither is right on
every CPU. Signed 8-bit weights (`"int8"`, U8S8) are the fast ones: on an AMD EPYC with AVX2 (no VNNI) the signed
int8 student ran 4.12x one teacher against 2.60x with unsigned weights (`benchmarks/bench_inference.py`, README).
But there onnxruntime multiplies them with VPMADDUBSW, which sums pairs of products into int16 and can saturate:
on that CPU a tiny random BERT's signed int8 logits were 7.3 off with the largest logit 8.1 (unsigned: 0.64), while
on the trained QNLI students both were fine (0.33 points of test accuracy lost signed, 0.27 unsigned, 4 students).
Unsigned weights (`"uint8"`, U8U8) cannot saturate on any CPU. So "auto" quantizes both ways, runs both on the
check batch of the CPU it exports on, and keeps the signed file unless its largest logit error is more than
`AUTO_SIGNED_MAX_RATIO` (4) times the unsigned one's (and above `AUTO_SIGNED_ABS_SLACK`): fast where it is safe,
unsigned where signed saturates. Why 4: saturation showed as 11x the unsigned error (7.3 against 0.64), while on the
four trained TMKD students the ratio ranged 0.6x-2.0x with the same accuracy (seed 3: 0.23 against 0.11 on the
check batch, both 0.36 points lost on test); at 2 that student would have lost the fast file to noise.
`onnx_export.json` records both errors and the choice. An export meant for other CPUs than the one it is made on
may want a fixed `"uint8"`.

Why per-channel 8-bit weights by default (both routes; `per_channel=False` gives one scale per weight matrix): on
layers 0, 1, 2 of all-MiniLM-L6-v2 with random 3-way heads, 64 QNLI pairs, per-channel weights halve the logits'
error against fp32 (onnxruntime: mean |difference| 0.22 against 0.49, torch: 0.34 against 0.61, logits up to 5.5)
for the same file size; onnxruntime fuses both into the same DynamicQuantizeMatMul kernel (whether they run
equally fast is for `benchmarks/bench_inference.py` on a quiet machine to say).

`keep_fp32="ffn_output"` leaves every block's second feed-forward MatMul in fp32. Its inputs are the GELU outputs, the
widest-ranging activations of the block. On three trained MiniLM-L6 QNLI classifiers
(`benchmarks/bench_quantization.py`, 824 test pairs) it cut the accuracy lost to int8 from 0.73 to 0.40 points on
average, for a 30 % larger file and 12 % less int8 throughput (4 % on a fused graph; `bench_inference.py`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
EXPORT_INFO_FILE = "onnx_export.json"
ONNX_SUBFOLDER = "onnx"  # where the recipes export a student, inside the folder that is pushed to the Hub
DEFAULT_OPSET = 17  # the first opset with a fused LayerNormalization; loaded by any recent runtime
EXPORT_TOLERANCE = 1e-4  # max |logit difference| allowed between the fp32 graph and PyTorch on the check batch
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")  # the graph's inputs, those the model reads
INSTALL_HINT = 'pip install "tmkd_hf[onnx]"'
# export_onnx(optimize=True): config.model_type -> onnxruntime's optimizer model type (BERT-style encoder blocks)
OPTIMIZER_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilbert": "bert",
    "electra": "bert",
}
WEIGHT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}  # export_onnx(weight_type=...) -> onnxruntime's QuantType
AUTO_WEIGHT_TYPE = "auto"  # quantize both ways, keep signed unless it saturates on this CPU (choose_weight_type)
AUTO_SIGNED_MAX_RATIO = 4.0  # "auto" drops signed weights whose check-batch error is over 4x the unsigned one's ...
AUTO_SIGNED_ABS_SLACK = 0.1  # ... and over 0.1 (below it both are too close to PyTorch for the ratio to matter)
# export_onnx(keep_fp32=...): named groups of matrix multiplications left in fp32 in the int8 file
KEEP_FP32_GROUPS = ("ffn_output",)

# Pairs to trace the graph with (2 rows: a dimension of size 1 would be fixed by torch.export), and a check batch
# of another size and length, with padding, to prove the axes are dynamic.
_TRACE_PAIRS = (("what is the largest city", "the largest city is the capital"), ("who wrote it", "a book"))
_CHECK_PAIRS = (
    ("when was the oldest king of the north born", "the king of the north was born in the first year of the war"),
    ("which river", "the river runs east"),
    ("how", "light"),
)


class OnnxRuntimeMissing(ImportError):
    """onnx or onnxruntime is not installed: the ONNX export and its runner need them."""


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise OnnxRuntimeMissing(
            f"{what} needs {module}: {INSTALL_HINT} (or pip install onnx onnxruntime). The torch-only int8 route, "
            "tmkd_hf.export.quantize_torch_int8, needs neither."
        ) from error


def check_onnx_installed(what: str) -> None:
    """Fail at start-up, before anything is trained, when `what` (a recipe flag) will need onnx and onnxruntime.
    Looks the packages up without importing them."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxRuntimeMissing(
            f"{what} needs {' and '.join(missing)}: {INSTALL_HINT} (checked before anything is "
            "trained, so nothing is lost)."
        )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _use_eager_attention(model: nn.Module) -> None:
    """Every transformers model inside `model` computes attention eagerly (matmul, softmax, matmul), the pattern
    onnxruntime's optimizer fuses into one `Attention` node; same numbers as SDPA."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            if hasattr(module, "set_attn_implementation"):
                module.set_attn_implementation("eager")
            else:
                config._attn_implementation = "eager"


def _fuse(path: str, config, model_type: str) -> dict:
    """Rewrite the graph at `path` with onnxruntime's transformer optimizer; the fused operators it made."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            path, model_type=model_type, num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(path)
    finally:
        quiet.setLevel(level)
    return {
        "method": f"onnxruntime.transformers.optimizer.optimize_model(model_type={model_type!r})",
        "fused_operators": fused,
    }


def _ffn_output_nodes(graph, config) -> list[str]:
    """The MatMul nodes of every block's second feed-forward layer (intermediate -> hidden), found by the shape of
    their weight, so the rule holds for any exporter, fused or not, and any BERT-like family."""
    inner = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if not inner or not hidden or inner == hidden:
        raise ValueError(
            f"keep_fp32=['ffn_output'] finds the feed-forward output layers by their weight shape (intermediate x "
            f"hidden), which this {config.model_type} config does not tell apart ({inner} x {hidden})."
        )
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    weight = (inner, hidden)
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(shapes.get(i) == weight for i in n.input)]


def _fp32_nodes(path: str, config, keep_fp32) -> list[str]:
    """Node names of the graph at `path` that the int8 file keeps in fp32: named groups (`KEEP_FP32_GROUPS`) and
    node names as they are in the graph; an entry that matches nothing is an error, not a silent no-op."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    names = {n.name for n in graph.node}
    nodes = []
    for entry in keep_fp32:
        if entry == "ffn_output":
            found = _ffn_output_nodes(graph, config)
            expected = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
            if len(found) != expected:
                raise ValueError(
                    f"keep_fp32=['ffn_output'] found {len(found)} feed-forward output MatMuls in {path}, expected one "
                    f"per layer ({expected})."
                )
        elif entry in names:
            found = [entry]
        else:
            raise ValueError(
                f"keep_fp32 takes the groups {list(KEEP_FP32_GROUPS)} or node names of the exported graph; {entry!r} "
                "is neither."
            )
        nodes += [n for n in found if n not in nodes]
    return nodes


def _export_graph(wrapper: nn.Module, trace: dict, path: str, names: list[str], *, opset, dynamo: bool) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation, and warns about transformers' mask code: shape
        # comparisons that are constant for an encoder, and indexing the padding mask with aranges (never negative,
        # which is what its "advanced indexing" warning is about); the check below runs the graph on other shapes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        if dynamo:
            _require("onnxscript", "torch.onnx.export(dynamo=True)")
            dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
            try:
                torch.onnx.export(
                    wrapper, tuple(trace.values()), path, input_names=names, output_names=["logits"],
                    opset_version=opset, dynamo=True,
                    dynamic_shapes={n: {0: dims["batch"], 1: dims["sequence"]} for n in names},
                    external_data=False, verbose=False,
                )  # fmt: skip
            except torch.onnx.errors.OnnxExporterError as error:  # torch.export's own error: pages of its trace
                cause = _first_line(error.__cause__ or error)
                raise _export_failure(f"torch.export failed ({cause})", wrapper.model, dynamo) from error
        else:
            axes = {n: {0: "batch", 1: "sequence"} for n in names}
            torch.onnx.export(
                wrapper, tuple(trace.values()), path, input_names=names, output_names=["logits"],
                opset_version=opset or DEFAULT_OPSET, dynamo=False,
                dynamic_axes={**axes, "logits": {0: "batch"}},
            )  # fmt: skip


def _check_graph(path: str, check: dict, expected: np.ndarray, model: nn.Module, dynamo: bool):
    """The graph's logits on the check batch (another size and length than it was traced with) and their largest
    difference to PyTorch's, or an error that names the fix. An exporter may record a shape that depends on the
    sequence length as a constant (the TorchScript one: Longformer's window padding, Funnel's pooling, DeBERTa's
    relative positions): onnxruntime then fails or computes other logits at any other length."""
    where = f"on {len(_CHECK_PAIRS)} padded pairs of another length than it was traced with"
    try:
        logits = OnnxClassifier(path)(**check)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types; the cause is named below
        raise _export_failure(f"{where}, onnxruntime cannot run it ({_first_line(error)})", model, dynamo) from None
    diff = _max_diff(logits, expected)
    if not diff <= EXPORT_TOLERANCE:
        problem = f"{where}, its logits differ from PyTorch's by {diff:.2e} (> {EXPORT_TOLERANCE})"
        raise _export_failure(problem, model, dynamo)
    return logits, diff


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # torch.export colours its messages
    return f"{type(error).__name__}: {text.splitlines()[0][:300]}" if text else type(error).__name__


def _export_failure(problem: str, model: nn.Module, dynamo: bool) -> RuntimeError:
    """The error of an export that gave no graph usable at any sequence length, naming the other exporter."""
    family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if dynamo:
        cause = "torch.export could not trace it with a free sequence length"
        other = "the TorchScript exporter: export_onnx(..., dynamo=False)"
    else:
        cause = "the TorchScript exporter fixed a shape that depends on the sequence length"
        other = "the torch.export-based exporter: export_onnx(..., dynamo=True) (needs onnxscript)"
    return RuntimeError(
        f"The ONNX export of this {family} model failed: {problem}. Likely cause: {cause}. Try {other}. Where both "
        "exporters fail, the model does not export to ONNX with a dynamic sequence length: serve it with PyTorch "
        f"(quantize_torch_int8 for int8 weights). No {ONNX_FILE} was kept."
    )


def _remove_export(path: str, made_dir: str | None) -> None:
    """Remove a graph that failed (and the folder, when this export made it and nothing else is in it)."""
    if os.path.exists(path):
        os.remove(path)
    if made_dir is not None and os.path.isdir(made_dir) and not os.listdir(made_dir):
        os.rmdir(made_dir)


class _LogitsOnly(nn.Module):
    """The classifier as the graph sees it: token tensors in, logits out (no ModelOutput, no loss)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs).logits


def _input_names(model: nn.Module, tokenizer) -> list[str]:
    """The inputs both the tokenizer gives and the model reads, in `INPUT_ORDER` (a RoBERTa or DistilBERT student
    has no token_type_ids)."""
    import inspect

    inner = getattr(model, "model", model)  # a MultiHeadStudent passes its inputs to the transformers model
    accepted = set(inspect.signature(inner.forward).parameters)
    names = [n for n in INPUT_ORDER if n in tokenizer.model_input_names and n in accepted]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise ValueError(
            f"The export needs input_ids and attention_mask; the tokenizer gives {tokenizer.model_input_names} and "
            f"the model reads {sorted(accepted & set(INPUT_ORDER))}."
        )
    return names


def _tokenize(tokenizer, pairs, names: list[str]) -> dict[str, torch.Tensor]:
    batch = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
    return {n: batch[n] for n in names}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _cpu_name() -> str:
    """The CPU the export's check ran on (where "auto" chose the weight type): /proc/cpuinfo's model name."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _opset(model_proto) -> int:
    return max(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))


def choose_weight_type(max_diff: dict[str, float]) -> str:
    """`weight_type="auto"`'s choice from the check batch's max |logit difference| to PyTorch of the signed ("int8")
    and the unsigned ("uint8") file: signed, the faster kernels, unless it saturated on this CPU, i.e. its error is
    over `AUTO_SIGNED_MAX_RATIO` times the unsigned one's and over `AUTO_SIGNED_ABS_SLACK`."""
    signed, unsigned = max_diff["int8"], max_diff["uint8"]
    if signed > AUTO_SIGNED_ABS_SLACK and signed > AUTO_SIGNED_MAX_RATIO * unsigned:
        return "uint8"
    return "int8"


class _PreprocessingHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_hint():
    """onnxruntime's quantize_dynamic logs "Please consider to run pre-processing before quantization" on the root
    logger (not as a warning) for every file; its pre-processing is shape inference and graph cleanup for static
    quantization, and each file made here is checked against PyTorch instead, so the hint is only noise (a benchmark
    that exports 50 files printed it 50 times)."""
    hint = _PreprocessingHint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _quantize(path: str, int8_path: str, weight_type: str, *, per_channel: bool, fp32_nodes, fused: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # a fused graph holds onnxruntime's own operators, whose outputs shape inference cannot type: float32
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else None
    with _without_preprocessing_hint():
        quantize_dynamic(
            path,
            int8_path,
            weight_type=getattr(QuantType, WEIGHT_TYPES[weight_type]),
            per_channel=per_channel,
            extra_options=extra,
            nodes_to_exclude=fp32_nodes,
        )


def export_onnx(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    quantize: bool = False,
    per_channel: bool = True,
    weight_type: str = AUTO_WEIGHT_TYPE,
    opset: int | None = None,
    dynamo: bool = False,
    optimize: bool = False,
    keep_fp32: Sequence[str] = (),
) -> dict:
    """Export the merged student in `model_dir` (a plain checkpoint or a CrossEncoder export, anything
    `tmkd_hf.load_classifier` loads, with its tokenizer) to `output_dir/model.onnx`, and with `quantize=True` also
    `model_int8.onnx`. Returns what `onnx_export.json` records (inputs, outputs, labels, exporter, opset, file sizes,
    the check batch's max |logit difference| to PyTorch per file).

    Args:
        per_channel: 8-bit weights with one scale per output channel (else one per weight matrix).
        weight_type: "auto" (default: both are made and checked, signed kept unless it saturates on this CPU),
            "int8" (signed, onnxruntime's U8S8 kernels: the faster, can saturate on AVX2-only x86 CPUs) or "uint8"
            (unsigned, U8U8: cannot saturate on any CPU, slower); see the module docstring.
        opset: ONNX opset (default 17 with the TorchScript exporter, torch's own default with `dynamo=True`).
        dynamo: use the torch.export-based exporter instead of the TorchScript one (needs onnxscript).
        optimize: fuse the transformer blocks with onnxruntime's transformer optimizer (`Attention`,
            `EmbedLayerNormalization`, `SkipLayerNormalization`, `BiasGelu`: onnxruntime's own operators, so the graph
            then runs only in onnxruntime) before the int8 file is made from it. The model is exported with eager
            attention for this (the optimizer recognises that pattern, not SDPA's). BERT-style encoders (bert,
            roberta, distilbert, ...; `OPTIMIZER_MODEL_TYPES`).
        keep_fp32: matrix multiplications the int8 file leaves in fp32: `"ffn_output"` (every block's second
            feed-forward layer, whose inputs, the GELU outputs, have the widest range; found by weight shape) and/or
            node names of the graph. Trades file size and some speed for accuracy (see the module docstring).
    """
    if weight_type != AUTO_WEIGHT_TYPE and weight_type not in WEIGHT_TYPES:
        choices = [AUTO_WEIGHT_TYPE, *sorted(WEIGHT_TYPES)]
        raise ValueError(f"weight_type must be one of {choices}, not {weight_type!r}.")
    keep_fp32 = [keep_fp32] if isinstance(keep_fp32, str) else list(keep_fp32)
    if keep_fp32 and not quantize:
        raise ValueError("keep_fp32 says which layers the int8 file keeps in fp32: use it with quantize=True.")
    _require("onnx", "The ONNX export")
    _require("onnxruntime", "The ONNX export (its check and the int8 file)")
    import onnx
    from transformers import AutoTokenizer

    from .modeling import MultiHeadStudent
    from .teachers import load_classifier

    model_dir, output_dir = str(model_dir), str(output_dir)
    model = load_classifier(model_dir).float().eval()
    optimizer_type = None
    if optimize:
        if dynamo:
            raise ValueError("optimize=True fuses the TorchScript exporter's graph; use it with dynamo=False.")
        optimizer_type = OPTIMIZER_MODEL_TYPES.get(model.config.model_type)
        if optimizer_type is None:
            raise ValueError(
                f"optimize=True knows the transformer blocks of {sorted(OPTIMIZER_MODEL_TYPES)}, not "
                f"{model.config.model_type!r}: export with optimize=False."
            )
        _use_eager_attention(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ValueError(f"{model_dir} has no tokenizer; save the student with its tokenizer ({error}).") from None
    names = _input_names(model, tokenizer)
    trace, check = _tokenize(tokenizer, _TRACE_PAIRS, names), _tokenize(tokenizer, _CHECK_PAIRS, names)
    made_dir = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ONNX_FILE)
    wrapper = _LogitsOnly(model).eval()
    try:
        _export_graph(wrapper, trace, path, names, opset=opset, dynamo=dynamo)
        optimization = _fuse(path, model.config, optimizer_type) if optimizer_type is not None else None
        with torch.inference_mode():
            expected = wrapper(**check).numpy()
        fp32_logits, fp32_diff = _check_graph(path, check, expected, model, dynamo)
    except BaseException:
        _remove_export(path, output_dir if made_dir else None)  # no graph that fails its check is left behind
        raise
    files, check_diff, quantization = {"fp32": ONNX_FILE}, {"fp32": fp32_diff}, None
    argmax_agreement = {"fp32": float((fp32_logits.argmax(-1) == expected.argmax(-1)).mean())}
    if quantize:
        int8_path = os.path.join(output_dir, ONNX_INT8_FILE)
        fp32_nodes = _fp32_nodes(path, model.config, keep_fp32)
        candidates = list(WEIGHT_TYPES) if weight_type == AUTO_WEIGHT_TYPE else [weight_type]
        made, candidate_diff = {}, {}
        for kind in candidates:  # "auto": both files, each checked on the check batch of this CPU
            made[kind] = int8_path if len(candidates) == 1 else os.path.join(output_dir, f".{kind}.{ONNX_INT8_FILE}")
            _quantize(path, made[kind], kind, per_channel=per_channel, fp32_nodes=fp32_nodes, fused=bool(optimization))
            candidate_diff[kind] = _max_diff(OnnxClassifier(made[kind])(**check), expected)
        chosen = choose_weight_type(candidate_diff) if len(candidates) > 1 else weight_type
        if made[chosen] != int8_path:
            os.replace(made[chosen], int8_path)
        for kind, candidate in made.items():
            if kind != chosen:
                os.remove(candidate)
        int8_logits = OnnxClassifier(int8_path)(**check)
        files["int8"] = ONNX_INT8_FILE
        check_diff["int8"] = _max_diff(int8_logits, expected)
        argmax_agreement["int8"] = float((int8_logits.argmax(-1) == expected.argmax(-1)).mean())
        quantization = {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": WEIGHT_TYPES[chosen],
            "per_channel": per_channel,
            "kept_fp32": {"requested": keep_fp32, "nodes": fp32_nodes},
        }
        if weight_type == AUTO_WEIGHT_TYPE:
            quantization["weight_type_choice"] = {
                "requested": AUTO_WEIGHT_TYPE,
                "max_abs_logit_diff_vs_torch": {WEIGHT_TYPES[k]: v for k, v in candidate_diff.items()},
                "rule": f"QInt8 unless its difference is over {AUTO_SIGNED_MAX_RATIO}x QUInt8's and over "
                f"{AUTO_SIGNED_ABS_SLACK}",
                "cpu": _cpu_name(),
            }
    tokenizer.save_pretrained(output_dir)
    model.config.save_pretrained(output_dir)  # the labels (id2label) and the architecture the graph came from
    num_labels = model.config.num_labels
    info = {
        "source": os.path.basename(os.path.abspath(model_dir)),  # the folder name: this file is pushed to the Hub
        "readout": model.readout if isinstance(model, MultiHeadStudent) else "cls",
        "files": files,
        "size_bytes": {kind: os.path.getsize(os.path.join(output_dir, name)) for kind, name in files.items()},
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in names],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", num_labels]}],
        "id2label": {str(i): model.config.id2label[i] for i in range(num_labels)},
        "exporter": "torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False) (TorchScript)",
        "opset": _opset(onnx.load(path, load_external_data=False)),
        "optimization": optimization,
        "quantization": quantization,
        "check": {
            "rows": len(_CHECK_PAIRS),
            "sequence_length": int(check["input_ids"].shape[1]),
            "traced_with": list(trace["input_ids"].shape),
            "max_abs_logit_diff_vs_torch": check_diff,
            "argmax_agreement_with_torch": argmax_agreement,
        },
        "versions": {p: _version(p) for p in ("tmkd_hf", "torch", "transformers", "onnx", "onnxruntime")},
    }
    with open(os.path.join(output_dir, EXPORT_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return info


class OnnxClassifier:
    """An exported student run by onnxruntime: `OnnxClassifier(dir)(**tokenizer(q, p, padding=True,
    return_tensors="np"))` gives the logits as a float32 array `[batch, num_labels]`.

    Args:
        path: an export folder (`model.onnx`, or `model_int8.onnx` with `int8=True`) or an `.onnx` file.
        threads: onnxruntime's intra-op threads (default: its own, every physical core); give
            `torch.get_num_threads()` to compare with PyTorch on the same footing.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path: str | os.PathLike, *, int8: bool = False, threads: int | None = None, providers=None):
        ort = _require("onnxruntime", "OnnxClassifier")
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, ONNX_INT8_FILE if int8 else ONNX_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: export the student first (tmkd_hf.export.export_onnx).")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, **inputs) -> np.ndarray:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.path} reads {self.input_names}; missing {missing}.")
        feed = {}
        for name in self.input_names:  # other keys (token_type_ids for a graph without them, labels) are ignored
            value = inputs[name]
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feed[name] = value.astype(np.int64, copy=False)
        return self.session.run(["logits"], feed)[0]


def quantize_torch_int8(model_or_path: nn.Module | str | os.PathLike, *, per_channel: bool = True) -> nn.Module:
    """The int8 route without onnxruntime: a copy of the classifier with every `nn.Linear` dynamically quantized
    (`torch.ao.quantization.quantize_dynamic`: int8 weights, one scale per output channel unless `per_channel=False`,
    activations quantized per batch), for CPU inference. Same call and outputs as the original
    (`model(**batch).logits`).

    `torch.ao.quantization` is deprecated upstream in favour of torchao, but present in every torch this package
    supports; its deprecation warnings are silenced here.
    """
    from .teachers import load_classifier

    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_classifier(model_or_path)
    else:
        model = copy.deepcopy(model_or_path)  # the caller's model keeps its weights and dtype
    model = model.float().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=r".*torch\.quantize_per_tensor.*")
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
