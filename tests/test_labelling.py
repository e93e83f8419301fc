"""label_with_teachers: exact logits, order, tokenizers, PEFT adapters, label alignment, resume, manifest."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import WORDS, pair_dataset, tiny_model, tokenize
from transformers import AutoModelForSequenceClassification, BertTokenizerFast

import tmkd_hf.labelling as labelling
from tmkd_hf import (
    DistillationArguments,
    MultiHeadStudent,
    MultiTeacherDistillationTrainer,
    label_with_teachers,
)
from tmkd_hf.labelling import WORK_DIR, read_manifest
from tmkd_hf.teachers import TeacherSpec


def direct_logits(model, tokenizer, dataset, columns=("question", "sentence"), max_length=128) -> np.ndarray:
    """The reference: one unpadded forward per example."""
    rows = []
    for row in dataset:
        enc = tokenizer(*[row[c] for c in columns], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            rows.append(model(**enc).logits[0].numpy())
    return np.stack(rows)


def load(path):
    return AutoModelForSequenceClassification.from_pretrained(path).eval()


def test_logits_equal_direct_forward_in_original_order(teacher_dirs, tokenizer):
    ds = pair_dataset(50, seed=3)  # lengths vary from row to row: sorting must be undone
    labelled = label_with_teachers(ds, teacher_dirs, batch_size=8, shard_size=16, show_progress=False)
    assert labelled.column_names == ["question", "sentence", "label", "teacher_logits"]
    assert list(labelled["question"]) == list(ds["question"])
    cached = np.asarray(labelled["teacher_logits"])
    assert cached.shape == (50, 3, 2) and labelled.features["teacher_logits"].dtype == "float32"
    for t, path in enumerate(teacher_dirs):
        np.testing.assert_allclose(cached[:, t], direct_logits(load(path), tokenizer, ds), atol=1e-4)
    manifest = read_manifest(labelled)
    assert manifest["num_rows"] == 50 and manifest["text_columns"] == ["question", "sentence"]


def test_heap_is_trimmed_after_every_batch(teacher_dirs, monkeypatch):
    """The memory fix: free heap pages go back to the OS after each batch (20 rows, batch 8, 1 shard: 3 batches),
    and the logits do not change with when that happens."""
    ds = pair_dataset(20, seed=5)
    calls = []
    monkeypatch.setattr(labelling, "_trim_heap", lambda: calls.append(1))
    per_batch = label_with_teachers(ds, teacher_dirs[:1], batch_size=8, show_progress=False)
    assert len(calls) == 3
    monkeypatch.setattr(labelling, "_TRIM_EVERY", "shard")
    calls.clear()
    per_shard = label_with_teachers(ds, teacher_dirs[:1], batch_size=8, show_progress=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(np.asarray(per_batch["teacher_logits"]), np.asarray(per_shard["teacher_logits"]))


def test_single_text_column_and_truncation(teacher_dirs, tokenizer):
    ds = pair_dataset(12, seed=4)
    labelled = label_with_teachers(ds, teacher_dirs[:1], text_columns="sentence", max_length=6, show_progress=False)
    expected = direct_logits(load(teacher_dirs[0]), tokenizer, ds, columns=("sentence",), max_length=6)
    np.testing.assert_allclose(np.asarray(labelled["teacher_logits"])[:, 0], expected, atol=1e-4)


def test_each_teacher_reads_with_its_own_tokenizer(tmp_path, tokenizer, teacher_dirs, monkeypatch):
    # a second vocabulary (other ids for the same words) and a RoBERTa-family model
    other_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(reversed(WORDS)) + list("zyxwvu")
    other_tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(other_vocab)})
    roberta = tiny_model("roberta", seed=7)
    roberta.save_pretrained(tmp_path / "roberta")
    other_tok.save_pretrained(tmp_path / "roberta")
    calls = []
    real_tokenize = labelling._tokenize
    monkeypatch.setattr(labelling, "_tokenize", lambda tok, *a, **k: calls.append(tok) or real_tokenize(tok, *a, **k))
    ds = pair_dataset(20, seed=5)
    teachers = [teacher_dirs[0], str(tmp_path / "roberta"), teacher_dirs[1]]
    cached = np.asarray(label_with_teachers(ds, teachers, show_progress=False)["teacher_logits"])
    assert len(calls) == 2  # two distinct tokenizers, each used once
    np.testing.assert_allclose(cached[:, 0], direct_logits(load(teacher_dirs[0]), tokenizer, ds), atol=1e-4)
    np.testing.assert_allclose(cached[:, 1], direct_logits(load(tmp_path / "roberta"), other_tok, ds), atol=1e-4)
    np.testing.assert_allclose(cached[:, 2], direct_logits(load(teacher_dirs[1]), tokenizer, ds), atol=1e-4)


def make_adapters(tmp_path, tokenizer, n=2):
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    tiny_model("bert", seed=0).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    dirs = []
    for i in range(n):
        model = get_peft_model(load(base_dir), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    p.normal_(std=0.5)
        model.save_pretrained(tmp_path / f"adapter-{i}")
        dirs.append(str(tmp_path / f"adapter-{i}"))
    return str(base_dir), dirs


def test_peft_adapters_share_one_base(tmp_path, tokenizer, monkeypatch):
    from peft import PeftModel

    base_dir, adapters = make_adapters(tmp_path, tokenizer)
    import tmkd_hf.teachers as teachers_mod

    loads = []
    real_load_base = teachers_mod._load_base
    monkeypatch.setattr(teachers_mod, "_load_base", lambda spec, **k: loads.append(spec) or real_load_base(spec, **k))
    ds = pair_dataset(24, seed=6)
    assert TeacherSpec.parse(adapters[0]) == TeacherSpec(name_or_path=base_dir, adapter=adapters[0])
    cached = np.asarray(label_with_teachers(ds, adapters, show_progress=False)["teacher_logits"])
    assert len(loads) == 1  # one base model, adapters switched on it
    for t, adapter in enumerate(adapters):
        reference = PeftModel.from_pretrained(load(base_dir), adapter).eval()
        np.testing.assert_allclose(cached[:, t], direct_logits(reference, tokenizer, ds), atol=1e-4)
    assert not np.allclose(cached[:, 0], cached[:, 1])


def test_labels_are_aligned_by_name(tmp_path, tokenizer):
    a = tiny_model("bert", seed=3, num_labels=3, head_scale=10.0)
    a.config.id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
    a.config.label2id = {v: k for k, v in a.config.id2label.items()}
    b = tiny_model("bert", seed=3, num_labels=3, head_scale=10.0)  # same weights, head rows in another order
    order = [2, 0, 1]
    with torch.no_grad():
        b.classifier.weight.copy_(a.classifier.weight[order])
        b.classifier.bias.copy_(a.classifier.bias[order])
    b.config.id2label = {i: a.config.id2label[j] for i, j in enumerate(order)}
    b.config.label2id = {v: k for k, v in b.config.id2label.items()}
    ds = pair_dataset(16, seed=8)
    labelled = label_with_teachers(ds, [(a, tokenizer), (b, tokenizer)], show_progress=False)
    cached = np.asarray(labelled["teacher_logits"])
    np.testing.assert_allclose(cached[:, 0], cached[:, 1], atol=1e-5)
    assert read_manifest(labelled)["label_names"] == ["entailment", "neutral", "contradiction"]

    c = tiny_model("bert", seed=4, num_labels=3)
    c.config.id2label = {0: "yes", 1: "no", 2: "maybe"}
    with pytest.raises(ValueError, match=r"Label sets differ: teacher .* has \['yes', 'no', 'maybe'\].*entailment"):
        label_with_teachers(ds, [(a, tokenizer), (c, tokenizer)], show_progress=False)
    d = tiny_model("bert", seed=4, num_labels=2)
    with pytest.raises(ValueError, match="predicts 2 labels"):
        label_with_teachers(ds, [(a, tokenizer), (d, tokenizer)], show_progress=False)


def test_resume_after_crash_gives_identical_result(tmp_path, teacher_dirs, monkeypatch):
    ds = pair_dataset(40, seed=9)
    clean = label_with_teachers(ds, teacher_dirs, output_dir=tmp_path / "clean", shard_size=8, show_progress=False)

    real_label_shard = labelling._label_shard
    calls = {"n": 0}

    def crash_on_seventh(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real_label_shard(*args, **kwargs)

    monkeypatch.setattr(labelling, "_label_shard", crash_on_seventh)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        label_with_teachers(ds, teacher_dirs, output_dir=out, shard_size=8, show_progress=False)
    assert read_manifest(out) is None  # unfinished: nothing claims to be a cache yet
    done = sorted(p.name for p in (out / WORK_DIR).rglob("shard-*.npy"))
    assert len(done) == 6
    calls["n"] = -100  # no more crashes
    resumed = label_with_teachers(ds, teacher_dirs, output_dir=out, shard_size=8, show_progress=False)
    assert calls["n"] == -100 + 15 - 6  # 3 teachers x 5 shards, 6 were already on disk
    np.testing.assert_array_equal(np.asarray(resumed["teacher_logits"]), np.asarray(clean["teacher_logits"]))
    assert not (out / WORK_DIR).exists()
    again = label_with_teachers(ds, teacher_dirs, output_dir=out, shard_size=8, show_progress=False)
    assert calls["n"] == -100 + 9  # a finished cache is loaded, not recomputed
    np.testing.assert_array_equal(np.asarray(again["teacher_logits"]), np.asarray(clean["teacher_logits"]))


def test_damaged_shards_are_named_and_recomputed_on_resume(tmp_path, teacher_dirs, monkeypatch, caplog):
    ds = pair_dataset(24, seed=9)
    clean = label_with_teachers(ds, teacher_dirs, output_dir=tmp_path / "clean", shard_size=8, show_progress=False)
    real_label_shard = labelling._label_shard
    calls = {"n": 0}

    def crash_on_eighth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("killed")
        return real_label_shard(*args, **kwargs)

    monkeypatch.setattr(labelling, "_label_shard", crash_on_eighth)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        label_with_teachers(ds, teacher_dirs, output_dir=out, shard_size=8, show_progress=False)
    shards = sorted((out / WORK_DIR).rglob("shard-*.npy"))
    assert len(shards) == 7
    shards[0].write_bytes(b"")  # zero bytes: a full disk
    shards[4].write_bytes(shards[4].read_bytes()[:100])  # cut short mid-data
    calls["n"] = -100
    with caplog.at_level("WARNING", logger="tmkd_hf.labelling"):
        resumed = label_with_teachers(ds, teacher_dirs, output_dir=out, shard_size=8, show_progress=False)
    damaged = [r.getMessage() for r in caplog.records if "Recomputing damaged shard" in r.getMessage()]
    assert len(damaged) == 2 and str(shards[0]) in damaged[0] and str(shards[4]) in damaged[1], damaged
    assert "unreadable (0 bytes" in damaged[0]
    assert calls["n"] == -100 + 9 - 7 + 2  # the 2 missing shards and the 2 damaged ones, nothing else
    np.testing.assert_array_equal(np.asarray(resumed["teacher_logits"]), np.asarray(clean["teacher_logits"]))


def test_half_written_shard_is_never_read_back(tmp_path, teacher_dirs, monkeypatch):
    ds = pair_dataset(16, seed=10)
    real_save = np.save

    def dying_save(f, array):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk died mid-write")

    monkeypatch.setattr(labelling.np, "save", dying_save)
    with pytest.raises(OSError, match="mid-write"):
        label_with_teachers(ds, teacher_dirs[:1], output_dir=tmp_path, shard_size=8, show_progress=False)
    assert not list((tmp_path / WORK_DIR).rglob("shard-*.npy"))  # only a temporary file was touched
    monkeypatch.setattr(labelling.np, "save", real_save)
    labelled = label_with_teachers(ds, teacher_dirs[:1], output_dir=tmp_path, shard_size=8, show_progress=False)
    assert np.isfinite(np.asarray(labelled["teacher_logits"])).all()


def test_bfloat16_autocast_is_close_to_float32(teacher_dirs):
    """dtype="bfloat16" really runs the teacher's layers in bfloat16 (seen by a forward hook on every Linear), and
    its logits, stored in float32, are near the float32 ones but not equal to them."""
    ds = pair_dataset(16, seed=13)
    seen: list[torch.dtype] = []

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.append(output.dtype)

    with torch.nn.modules.module.register_module_forward_hook(record):
        full = np.asarray(label_with_teachers(ds, teacher_dirs[:1], show_progress=False)["teacher_logits"])
        full_dtypes, seen[:] = set(seen), []
        labelled = label_with_teachers(ds, teacher_dirs[:1], dtype="bfloat16", show_progress=False)
        half_dtypes = set(seen)
    assert full_dtypes == {torch.float32}
    assert half_dtypes == {torch.bfloat16}  # every Linear of the teacher ran in bfloat16
    half = np.asarray(labelled["teacher_logits"])
    assert half.shape == full.shape and labelled.features["teacher_logits"].dtype == "float32"
    np.testing.assert_allclose(half, full, atol=0.05)
    assert np.abs(half - full).max() > 1e-4  # bfloat16 rounding shows: these are not the float32 logits


def test_clear_errors(teacher_dirs, tokenizer):
    ds = pair_dataset(8)
    with pytest.raises(ValueError, match=r"text_columns \['passage'\] are not in the dataset"):
        label_with_teachers(ds, teacher_dirs, text_columns=("question", "passage"))
    with pytest.raises(ValueError, match="without its tokenizer"):
        label_with_teachers(ds, [tiny_model("bert")])
    with pytest.raises(ValueError, match="at least one teacher"):
        label_with_teachers(ds, [])
    with pytest.raises(ValueError, match="dtype must be one of"):
        label_with_teachers(ds, teacher_dirs, dtype="int8")
    with pytest.raises(ValueError, match="The dataset is empty"):
        label_with_teachers(ds.select([]), teacher_dirs)
    holes = ds.map(lambda row, i: {"sentence": None if i in (2, 5) else row["sentence"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"Text column 'sentence' has 2 missing value\(s\) \(None\) at rows \[2, 5\]"):
        label_with_teachers(holes, teacher_dirs)
    short = tiny_model("bert", max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"max_length=64 is longer than teacher 1 .* reads: 16 tokens"):
        label_with_teachers(ds, [teacher_dirs[0], (short, tokenizer)], max_length=64)
    roberta = tiny_model("roberta")  # 130 positions, numbered from pad_token_id + 1 = 1 as RoBERTa does
    with pytest.raises(ValueError, match="reads: 129 tokens"):
        label_with_teachers(ds, [(roberta, tokenizer)], max_length=130)
    with pytest.raises(FileNotFoundError, match=r"teachers\[0\]: teacher '/nonexistent/teacher': no such directory"):
        label_with_teachers(ds, [{"name_or_path": "/nonexistent/teacher", "tokenizer": teacher_dirs[0]}])


def test_a_missing_teacher_is_named_before_any_teacher_runs(teacher_dirs, monkeypatch):
    """A typo in the third teacher's path fails first, naming it (not "Repo id must be in the form ..." from the
    tokenizer), and before the first teacher is loaded; a Hub id that the offline cache lacks says so."""
    loaded = []
    monkeypatch.setattr(labelling, "load_tokenizer", lambda spec: loaded.append(spec) or None)
    ds = pair_dataset(8)
    with pytest.raises(FileNotFoundError, match=r"teachers\[2\]: teacher '\./teachers/t2': no such directory, and "
                       "it is not a Hub id"):
        label_with_teachers(ds, [*teacher_dirs[:2], "./teachers/t2"])
    assert loaded == []
    with pytest.raises(FileNotFoundError, match=r"teachers\[1\]: teacher 'org/teacher-x': .* not in the local cache "
                       r"while the Hub is offline \(HF_HUB_OFFLINE=1\)"):
        label_with_teachers(ds, [teacher_dirs[0], "org/teacher-x@v2"])
    with pytest.raises(ValueError, match="is a file; give the checkpoint's directory"):
        label_with_teachers(ds, [os.path.join(teacher_dirs[0], "config.json")])
    with pytest.raises(FileNotFoundError, match="teacher adapter '/no/adapter'"):
        label_with_teachers(ds, [{"name_or_path": teacher_dirs[0], "adapter": "/no/adapter"}])


def test_labelled_dataset_trains(tmp_path, teacher_dirs, tokenizer):
    ds = label_with_teachers(
        pair_dataset(32, seed=14), teacher_dirs, output_dir=tmp_path / "cache", show_progress=False
    )
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=8,
        save_strategy="no",
    )
    trainer = MultiTeacherDistillationTrainer(
        model=MultiHeadStudent(tiny_model("bert"), 3),
        args=args,
        train_dataset=tokenize(ds, tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    assert os.path.isdir(tmp_path / "cache")


def test_nan_from_the_third_teacher_names_it_and_its_rows(tmp_path, teacher_dirs, tokenizer):
    from datasets import Dataset

    poison, plain = WORDS[-1], list(WORDS[:-1])
    broken = tmp_path / "teacher-nan"
    model = tiny_model("bert", seed=7)
    with torch.no_grad():  # NaN in one word's embedding: only the rows with that word get NaN logits
        model.bert.embeddings.word_embeddings.weight[tokenizer.convert_tokens_to_ids(poison)] = float("nan")
    model.save_pretrained(broken)
    tokenizer.save_pretrained(broken)
    sentences = [f"{plain[i]} {plain[i + 1]}" + (f" {poison}" if i in (11, 13) else "") for i in range(16)]
    ds = Dataset.from_dict({"question": [plain[i + 2] for i in range(16)], "sentence": sentences})
    out = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"Teacher 2 \('.*teacher-nan'\) produced NaN or inf logits for 2 of 8 rows "
                       r"of shard 1 \(dataset rows 11, 13\)"):
        label_with_teachers(ds, [*teacher_dirs[:2], str(broken)], output_dir=out, shard_size=8, show_progress=False)
    # the finished shards are kept for the rerun (teacher 2's clean shard 0 too); its shard 1 was not saved
    saved = sorted(p.relative_to(out / WORK_DIR).as_posix() for p in (out / WORK_DIR).rglob("*.npy"))
    assert len(saved) == 5, saved


def test_a_hub_revision_reaches_from_pretrained_and_the_manifest(monkeypatch):
    """`"org/model@v2"` means revision v2 of org/model: it is what the config, model and tokenizer are loaded at."""
    import tmkd_hf.teachers as teachers

    spec = TeacherSpec.parse("org/model@v2")
    assert (spec.name_or_path, spec.revision, spec.name) == ("org/model", "v2", "org/model@v2")
    assert spec.identity() == {"name_or_path": "org/model", "revision": "v2"}
    seen = []

    class Recorder:
        @staticmethod
        def from_pretrained(name, **kwargs):
            seen.append((name, kwargs.get("revision")))
            return tiny_model("bert")

    monkeypatch.setattr(teachers, "AutoConfig", Recorder)
    monkeypatch.setattr(teachers, "AutoModelForSequenceClassification", Recorder)
    monkeypatch.setattr(teachers, "AutoTokenizer", Recorder)
    monkeypatch.setattr(TeacherSpec, "check_location", lambda self: None)  # offline: no Hub to ask
    teachers.load_teacher("org/model@v2")
    teachers.load_tokenizer(spec)
    assert seen == [("org/model", "v2")] * 3
