"""Every encoder family through the whole user path, on tiny random models built from configs.

For each of 18 architectures: two teachers labelled with `label_with_teachers`, a student from a checkpoint and one
from teacher layers (each compared with the teacher it comes from, not only run), three training steps with
`MultiTeacherDistillationTrainer`, the merged export reloaded without tmkd_hf (`AutoModelForSequenceClassification`,
or a sentence-transformers `CrossEncoder` for a mean readout), a student with another tokenizer than its teachers,
and (slow) the ONNX export. What a family does not support is refused at construction with a message that names
the problem; `SUPPORT` below is the table in README.md ("Model families").
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import WORDS, pair_dataset, tokenize
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from tmkd_hf import (
    DataCollatorWithTeacherLogits,
    DistillationArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    label_with_teachers,
    student_from_teacher_layers,
)
from tmkd_hf.initialization import _encoder_layer_list
from tmkd_hf.teachers import load_classifier

NUM_LAYERS = 4
LAYERS = [0, 3]  # not a prefix: the last layer moves to position 1 (and ModernBERT keeps its first layer first)
FAMILIES = (
    "bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert", "xlm-roberta", "camembert",
    "mpnet", "modernbert", "mobilebert", "big_bird", "nomic_bert", "gte", "xlnet", "longformer", "funnel",
)  # fmt: skip

# What each family supports ("yes", or the words its refusal contains). README.md's table says the same.
SUPPORT = {family: {"from_layers": "yes", "mean": "yes", "onnx": "yes"} for family in FAMILIES}
SUPPORT["albert"]["from_layers"] = "yes (fewer repetitions of the shared layer)"
SUPPORT["funnel"]["from_layers"] = "pools the sequence between its blocks"
SUPPORT["funnel"]["mean"] = "pools the sequence between its blocks"
SUPPORT["longformer"]["onnx"] = "neither exporter"
SUPPORT["funnel"]["onnx"] = "neither exporter"


def family_config(family: str, vocab_size: int = 128, num_layers: int = NUM_LAYERS, **overrides):
    """A tiny config of `family`: width 32, 2 heads, `num_layers` layers, 2 labels, pad id 0. Per-layer settings
    are made to differ from layer to layer where the family has them, so that a wrong layer is seen."""
    kwargs = dict(vocab_size=vocab_size, num_labels=2, hidden_size=32, num_hidden_layers=num_layers,
                  num_attention_heads=2, intermediate_size=37, max_position_embeddings=130, pad_token_id=0,
                  initializer_range=0.2)  # fmt: skip
    if family == "distilbert":
        kwargs.update(dim=32, n_layers=num_layers, n_heads=2, hidden_dim=37)
    elif family in ("electra", "albert"):
        kwargs.update(embedding_size=16)
    elif family == "mobilebert":
        kwargs.update(embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=1)
    elif family == "longformer":
        kwargs.update(attention_window=[4 * (i % 2 + 1) for i in range(num_layers)])  # 4, 8, 4, 8, ...
    elif family == "modernbert":
        kwargs.update(local_attention=8, global_attn_every_n_layers=3)  # full, sliding, sliding, full, ...
    elif family == "big_bird":  # what the released checkpoints run below 704 tokens (block-sparse beyond)
        kwargs.update(attention_type="original_full")
    elif family == "deberta":  # relative positions over the whole length, as in the released checkpoints
        kwargs.update(relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=-1)
    elif family == "deberta-v2":  # DeBERTa-v3's settings: log-bucketed relative positions, shared keys
        kwargs.update(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                      position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True)  # fmt: skip
    elif family == "nomic_bert":
        kwargs.update(head_dim=16)
    elif family == "gte":
        kwargs.update(type_vocab_size=2)  # the WordPiece tokenizer gives token_type_ids 0 and 1
    elif family == "xlnet":
        kwargs = dict(vocab_size=vocab_size, num_labels=2, d_model=32, n_layer=num_layers, n_head=2, d_inner=37,
                      pad_token_id=0, initializer_range=0.2)  # fmt: skip
    elif family == "funnel":
        kwargs = dict(vocab_size=vocab_size, num_labels=2, d_model=32, n_head=2, d_head=16, d_inner=37,
                      block_sizes=[1, 1, 2], num_decoder_layers=1, pad_token_id=0, initializer_std=0.2)  # fmt: skip
    kwargs.update(overrides)
    return AutoConfig.for_model(family, **kwargs)


def teacher_tokenizer(tokenizer, family: str):
    """The WordPiece test tokenizer; for XLNet, whose classifier reads the last token, one that pads on the left
    (as XLNet's own tokenizer does; saved with it)."""
    if family != "xlnet":
        return tokenizer
    return type(tokenizer)(vocab=tokenizer.get_vocab(), do_lower_case=True, padding_side="left")


def build_other_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (RoBERTa-style, no token_type_ids) trained here on the test words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]  # <pad> is 0, as pad_token_id in the configs
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 1))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", unk_token="<unk>", mask_token="<mask>",
                                   model_input_names=["input_ids", "attention_mask"])  # fmt: skip


def own_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """The teacher running only its layers `layers`, in that order: the reference a student from those layers must
    equal. ALBERT (one shared layer) runs it `len(layers)` times."""
    reference = copy.deepcopy(teacher)
    if getattr(reference.config, "num_hidden_groups", None) == 1:
        reference.config.num_hidden_layers = len(layers)
        return reference
    name = _encoder_layer_list(reference, reference.config.num_hidden_layers)
    parent, _, child = name.rpartition(".")
    chosen = nn.ModuleList([reference.get_submodule(name)[i] for i in layers])
    setattr(reference.get_submodule(parent), child, chosen)
    reference.config.num_hidden_layers = len(layers)
    return reference


def logits_of(model, tokenizer, pairs) -> torch.Tensor:
    batch = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits


def train_three_steps(student, data, tokenizer, output_dir: str) -> str:
    """Three steps of the trainer; returns the folder of its final (merged) save."""
    args = DistillationArguments(output_dir=output_dir, max_steps=3, per_device_train_batch_size=4, alpha=0.5,
                                 learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no",
                                 disable_tqdm=True, logging_strategy="no")  # fmt: skip
    trainer = MultiTeacherDistillationTrainer(model=student, args=args, train_dataset=data, processing_class=tokenizer,
                                              data_collator=DataCollatorWithTeacherLogits(tokenizer))  # fmt: skip
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items()), "training changed nothing"
    final = os.path.join(output_dir, "final")
    trainer.save_model(final)
    return final


_RAW = pair_dataset(5, seed=11, with_labels=False)
PAIRS = list(zip(_RAW["question"], _RAW["sentence"]))
PAIRS.append(("what is the largest city of the north", " ".join(WORDS[:20])))  # longer than a window or block


@pytest.fixture(scope="module")
def other_tokenizer():
    return build_other_tokenizer()


@pytest.fixture(scope="module")
def quiet():
    """One torch thread (a 32-wide model gains nothing from more, and on a shared CPU their waits for each other cost
    several times the work: 8 s against 34 s for three families here) and no warnings of tiny random models."""
    level, threads = hf_logging.get_verbosity(), torch.get_num_threads()
    hf_logging.set_verbosity_error()  # the "nearly constant readout" warnings, load reports
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    hf_logging.set_verbosity(level)


@pytest.fixture(scope="module")
def path(tmp_path_factory, tokenizer, other_tokenizer, quiet):
    """Per family, run once: teachers, labels, students, trainings, exports. Tests read what they need."""
    results: dict[str, dict] = {}

    def run(family: str) -> dict:
        if family in results:
            return results[family]
        root = tmp_path_factory.mktemp(family)
        tok = teacher_tokenizer(tokenizer, family)
        teachers = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_config(family_config(family)).eval()
            model.save_pretrained(root / f"teacher-{seed}")
            tok.save_pretrained(root / f"teacher-{seed}")
            teachers.append(model)
        dirs = [str(root / f"teacher-{seed}") for seed in (1, 2)]
        # Funnel's pooling drops the last position of an odd-length sequence (truncate_seq, on in the released
        # checkpoints): its logits depend on the padded length, in transformers itself. Unpadded rows, one by one.
        labelled = label_with_teachers(pair_dataset(12, seed=3), dirs, text_columns=("question", "sentence"),
                                       batch_size=1 if family == "funnel" else 5, max_length=64)  # fmt: skip
        out = {"tok": tok, "teachers": teachers, "dirs": dirs, "labelled": labelled, "root": str(root)}

        out["from_checkpoint"] = MultiHeadStudent.from_pretrained(dirs[0], num_teachers=2)
        if SUPPORT[family]["from_layers"].startswith("yes"):
            student = MultiHeadStudent(student_from_teacher_layers(dirs[0], layers=LAYERS), 2)
            out["from_layers_logits"] = logits_of(student, tok, PAIRS)
        else:
            with pytest.raises(ValueError) as refused:
                student_from_teacher_layers(dirs[0], layers=LAYERS)
            out["from_layers_refusal"] = str(refused.value)
            student = MultiHeadStudent.from_pretrained(dirs[0], num_teachers=2)  # a student from the checkpoint
        out["cls_export"] = train_three_steps(student, tokenize(labelled, tok), tok, str(root / "cls"))
        out["cls_logits"] = logits_of(student, tok, PAIRS)

        # A student with another tokenizer: the teachers' soft labels are per row, not per token.
        other_config = family_config(family, vocab_size=len(other_tokenizer))
        torch.manual_seed(0)
        encoder = AutoModelForSequenceClassification.from_config(other_config)
        readout = "mean" if SUPPORT[family]["mean"] == "yes" else "cls"
        if readout == "cls":
            with pytest.raises(ValueError) as refused:
                MultiHeadStudent(encoder, 2, readout="mean")
            out["mean_refusal"] = str(refused.value)
        other = MultiHeadStudent(encoder, 2, readout=readout)
        out["other_export"] = train_three_steps(other, tokenize(labelled, other_tokenizer), other_tokenizer,
                                                str(root / "other"))  # fmt: skip
        out["other_readout"] = readout
        out["other_logits"] = logits_of(other, other_tokenizer, PAIRS)
        results[family] = out
        return out

    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_two_teachers_label_every_row_as_they_predict_it(path, family):
    run = path(family)
    logits = torch.tensor(run["labelled"]["teacher_logits"])
    assert logits.shape == (12, 2, 2) and torch.isfinite(logits).all()
    rows = run["labelled"][:3]
    for t, teacher in enumerate(run["teachers"]):
        for i, pair in enumerate(zip(rows["question"], rows["sentence"])):  # each row alone: no padding
            torch.testing.assert_close(logits[i, t], logits_of(teacher, run["tok"], [pair])[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_student_from_a_checkpoint_predicts_as_its_checkpoint(path, family):
    run = path(family)
    expected = logits_of(run["teachers"][0], run["tok"], PAIRS)
    torch.testing.assert_close(logits_of(run["from_checkpoint"], run["tok"], PAIRS), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_student_from_teacher_layers_is_the_teachers_own_layers_or_refused(path, family):
    run = path(family)
    if "from_layers_refusal" in run:
        assert SUPPORT[family]["from_layers"] in run["from_layers_refusal"]
        assert "MultiHeadStudent.from_pretrained" in run["from_layers_refusal"]  # the way out is named
        return
    expected = logits_of(own_layers(run["teachers"][0], LAYERS), run["tok"], PAIRS)
    torch.testing.assert_close(run["from_layers_logits"], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_students_reload_from_their_exports(path, family):
    """In process: the merged [CLS] export with transformers, the other-tokenizer student's export (a CrossEncoder
    for a mean readout) with tmkd_hf's own loader; both give the trained student's logits."""
    run = path(family)
    plain = AutoModelForSequenceClassification.from_pretrained(run["cls_export"])
    torch.testing.assert_close(logits_of(plain, run["tok"], PAIRS), run["cls_logits"], atol=1e-5, rtol=1e-4)
    other_tokenizer = build_other_tokenizer()
    reloaded = load_classifier(run["other_export"])
    torch.testing.assert_close(logits_of(reloaded, other_tokenizer, PAIRS), run["other_logits"], atol=1e-5, rtol=1e-4)
    assert os.path.isfile(os.path.join(run["other_export"], "modules.json")) == (run["other_readout"] == "mean")
    if "mean_refusal" in run:
        assert SUPPORT[family]["mean"] in run["mean_refusal"] and "readout='cls'" in run["mean_refusal"]


RELOAD_SCRIPT = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out = {}
for name, kind, folder, pairs in json.loads(sys.argv[1]):
    if kind == "mean":
        from sentence_transformers import CrossEncoder
        logits = CrossEncoder(folder).predict(pairs, batch_size=len(pairs)).tolist()
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        batch = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits.tolist()
    out[name] = logits
assert not any(name.startswith("tmkd_hf") for name in sys.modules), "tmkd_hf was imported"
print(json.dumps(out))
"""


def test_every_export_loads_without_tmkd_hf(path):
    """One process that never imports tmkd_hf loads every family's exports: the [CLS] students with
    `AutoModelForSequenceClassification`, the mean-readout students as sentence-transformers `CrossEncoder`s."""
    pytest.importorskip("sentence_transformers")
    jobs, expected = [], {}
    for family in FAMILIES:
        run = path(family)
        jobs.append((f"{family}/cls", "cls", run["cls_export"], PAIRS))
        expected[f"{family}/cls"] = run["cls_logits"]
        jobs.append((f"{family}/other", run["other_readout"], run["other_export"], PAIRS))
        expected[f"{family}/other"] = run["other_logits"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps(jobs)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, logits in expected.items():
        torch.testing.assert_close(torch.tensor(got[name]), logits, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_matches_torch_or_is_refused_leaving_nothing(path, family, tmp_path):
    """Both trained students of the family through `export_onnx`: the graph gives PyTorch's logits at other lengths
    than it was traced with, or the export fails naming the other exporter and keeps no `model.onnx`."""
    pytest.importorskip("onnxruntime")
    from tmkd_hf.export import OnnxClassifier, export_onnx

    run = path(family)
    expected = SUPPORT[family]["onnx"]
    for name, folder, tok in (("cls", run["cls_export"], run["tok"]), ("other", run["other_export"], None)):
        tok = tok or build_other_tokenizer()
        out = tmp_path / name
        if expected == "yes":
            export_onnx(folder, out)
        else:
            with pytest.raises(RuntimeError, match=r"dynamo=True") as refused:
                export_onnx(folder, out)
            assert "No model.onnx was kept" in str(refused.value) and not out.exists()
            if expected == "neither exporter":
                with pytest.raises(RuntimeError, match=r"dynamo=False"):
                    export_onnx(folder, out, dynamo=True)
                assert not out.exists()
                continue
            export_onnx(folder, out, dynamo=True)
        batch = tok([q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True, return_tensors="np")
        reference = run["cls_logits"] if name == "cls" else run["other_logits"]
        torch.testing.assert_close(torch.from_numpy(OnnxClassifier(out)(**batch)), reference, atol=1e-4, rtol=1e-4)
