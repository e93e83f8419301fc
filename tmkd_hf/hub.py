"""Publishing students (and teacher soft labels) on the Hugging Face Hub, with errors that say what to do.

What gets published is the **merged plain student**: `config.json` + `model.safetensors` + tokenizer + model card,
loadable with `AutoModelForSequenceClassification` / `pipeline("text-classification")` without tmkd_hf. The local
save always happens first, so a failed push (no token, a repo holding another model, a network or server error)
raises a [`HubPushError`] that names the cause and the folder where everything is already saved.

`MultiTeacherDistillationTrainer.push_to_hub`, `create_model_card`, `init_hf_repo` and `_push_from_checkpoint`
delegate here; `upload_student_folder` and `push_teacher_logits_to_hub` are usable on their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import HfApi, get_token
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy
from transformers.utils import PushInProgress, logging

from .labelling import MANIFEST_NAME, read_manifest
from .model_card import StudentCardData, TeacherInfo, _is_hub_id, write_model_card
from .modeling import STUDENT_CONFIG_NAME, MultiHeadStudent

logger = logging.get_logger(__name__)

TOKEN_HELP = (
    "pass a token with write access (trainer: --hub_token / DistillationArguments(hub_token=...); functions: "
    "token=...), set the HF_TOKEN environment variable, or run `hf auth login`"
)


class HubPushError(RuntimeError):
    """A push to the Hub failed; the message names the cause, the fix, and where the local copy is."""


# ----- errors -----


def _describe_failure(err: BaseException) -> str:
    name = type(err).__name__
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    server_message = str(err).strip().splitlines()[0] if str(err).strip() else name
    if name == "OfflineModeIsEnabled":
        return "HF_HUB_OFFLINE=1 is set, so huggingface_hub refuses to connect: unset it (or set HF_HUB_OFFLINE=0)."
    if status in (401,):
        return f"the Hub rejected the token (401 Unauthorized): {TOKEN_HELP}."
    if status == 403:
        return "the token has no write access to this repository or namespace (403 Forbidden)."
    if status in (409, 412):
        return f"the repository changed or conflicts with this push ({status}): {server_message}"
    if status is not None and status >= 500:
        return f"the Hub answered with a server error ({status}); retry later. ({server_message})"
    if status is not None:
        return f"the Hub answered {status}: {server_message}"
    if any(word in name for word in ("Connect", "Timeout", "Network", "Protocol", "Transport", "SSL", "Proxy")):
        endpoint = huggingface_hub.constants.ENDPOINT
        return f"could not reach the Hub at {endpoint} ({name}: {server_message}); check the network / HF_ENDPOINT."
    return f"{name}: {server_message}"


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str | None, saved_dir: str | os.PathLike | None = None):
    """Turn any failure of `action` into a `HubPushError` that says why and where the local output is."""
    try:
        yield
    except HubPushError:
        raise
    except Exception as err:
        message = f"Could not {action}{f' {repo_id!r}' if repo_id else ''}: {_describe_failure(err)}"
        if saved_dir is not None:
            message += (
                f" Nothing was lost: everything is saved in {os.fspath(saved_dir)}; push it later with "
                f"`hf upload {repo_id or '<repo_id>'} {os.fspath(saved_dir)}` or by calling push_to_hub again."
            )
        raise HubPushError(message) from err


def require_token(token: str | bool | None, saved_dir: str | os.PathLike | None = None) -> str | bool:
    """`token`, or the locally configured one; a `HubPushError` naming the three ways to give one if there is none."""
    if token is False:
        return token
    token = token or get_token()
    if not token:
        where = f" Nothing was lost: the output is saved in {os.fspath(saved_dir)}." if saved_dir is not None else ""
        raise HubPushError(f"Pushing to the Hub needs a Hugging Face token, and none was found: {TOKEN_HELP}.{where}")
    return token


# ----- repositories and uploads -----


def create_repo(
    repo_id: str,
    token: str | bool | None = None,
    private: bool | None = None,
    repo_type: str | None = None,
    saved_dir: str | os.PathLike | None = None,
) -> str:
    """Create (or reuse) `repo_id` and return its full id (`namespace/name`)."""
    token = require_token(token, saved_dir)
    with hub_errors("create or access the Hub repository", repo_id, saved_dir):
        url = HfApi().create_repo(repo_id, token=token, private=private, repo_type=repo_type, exist_ok=True)
    return url.repo_id


def check_no_other_model(
    repo_id: str, folder: str | os.PathLike, token: str | bool | None = None, revision: str | None = None
) -> None:
    """Refuse to push into a repo whose root already holds a *different* model (another type or label set, or a
    plain model where a multi-head student goes, or the reverse).

    Pushing there would leave a repo with mixed files (e.g. the other model's card or weights index next to this
    config). A repo that holds an earlier push of a student like this one (same kind, model type and labels) is fine.
    """

    def kind_and_config(files: set[str], read) -> tuple[str, dict] | None:  # a multi-head root keeps its config inside
        if "config.json" in files:
            return "plain", read("config.json")
        if STUDENT_CONFIG_NAME in files:
            return "multi-head", read(STUDENT_CONFIG_NAME).get("base_config", {})
        return None

    local_files = {p.name for p in Path(folder).iterdir() if p.is_file()} if Path(folder).is_dir() else set()
    local = kind_and_config(local_files, lambda name: json.loads((Path(folder) / name).read_text()))
    if local is None:
        return
    api = HfApi()
    with hub_errors("read the existing Hub repository", repo_id, folder):
        root = {entry.path for entry in api.list_repo_tree(repo_id, revision=revision, token=token)}

        def read_remote(name: str) -> dict:
            return json.loads(Path(api.hf_hub_download(repo_id, name, revision=revision, token=token)).read_text())

        remote = kind_and_config(root, read_remote)
    if remote is None:
        return
    (local_kind, local), (remote_kind, remote) = local, remote

    def labels(config: dict) -> list[str]:  # transformers omits id2label when it is the default LABEL_0..1
        id2label = config.get("id2label") or {}
        if id2label:
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
        return [f"LABEL_{i}" for i in range(config.get("num_labels", 2))]

    def identity(config: dict) -> tuple:
        return config.get("model_type"), tuple(config.get("architectures") or ()), tuple(labels(config))

    if (remote_kind, *identity(remote)) != (local_kind, *identity(local)):
        raise HubPushError(
            f"The Hub repository {repo_id!r} already holds another model (model_type {remote.get('model_type')!r}, "
            f"architectures {remote.get('architectures')}, labels {labels(remote)}, a {remote_kind} checkpoint); "
            f"this student is {local.get('model_type')!r} {local.get('architectures')} with labels {labels(local)}, "
            f"a {local_kind} checkpoint. Pushing would "
            "mix the two. Choose another repo id "
            f"(hub_model_id=...), or pass replace_existing_model=True to overwrite it. Nothing was lost: the student "
            f"is saved in {os.fspath(folder)}."
        )


def upload_student_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload TMKD student",
    run_as_future: bool = False,
    ignore_patterns: list[str] | None = None,
    replace_existing_model: bool = False,
    multi_head: bool = False,
):
    """Upload a saved merged student (`folder` with config, weights, tokenizer, README.md) to `repo_id`.

    Creates the repo if needed, refuses a repo holding a different model unless `replace_existing_model`, and
    raises `HubPushError` (with the cause and the local folder) on any failure. Returns the `CommitInfo`, or a
    `Future` with `run_as_future=True` (whose errors then surface when you call `.result()`).

    `multi_head=True` publishes a multi-head student as it is (`tmkd_student.json` + weights at the root, every
    head): a stage-1 student for others to continue with stage 2 (`run_qa_distill_pretrain.py --push_to_hub`).
    Without it such a folder is refused, since a finished student is published merged.
    """
    folder = Path(folder)
    if multi_head and not (folder / STUDENT_CONFIG_NAME).is_file():
        raise HubPushError(f"{folder} holds no multi-head student ({STUDENT_CONFIG_NAME} is missing).")
    if not multi_head and (folder / STUDENT_CONFIG_NAME).is_file() and not (folder / "config.json").is_file():
        raise HubPushError(
            f"{folder} holds a multi-head training checkpoint, not a plain model. Publish the merged student: "
            "trainer.save_model(dir) or MultiHeadStudent.from_pretrained(checkpoint).save_pretrained(dir, merged=True)."
        )
    token = require_token(token, folder)
    repo_id = create_repo(repo_id, token=token, private=private, saved_dir=folder)
    if not replace_existing_model:
        check_no_other_model(repo_id, folder, token=token, revision=revision)
    with hub_errors("upload to the Hub repository", repo_id, folder):
        return HfApi().upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            token=token,
            revision=revision,
            run_as_future=run_as_future,
            ignore_patterns=ignore_patterns,
        )


def push_teacher_logits_to_hub(
    dataset_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    split: str = "train",
    commit_message: str = "Upload teacher soft labels (tmkd_hf)",
):
    """Publish a labelled dataset saved by `label_with_teachers(..., output_dir=dataset_dir)` as a Hub dataset.

    The rows (text, labels and the `teacher_logits` column) go up as Parquet (`data/{split}-00000-of-00001.parquet`,
    loadable with `datasets.load_dataset(repo_id)`), with the labelling manifest (`tmkd_manifest.json`: teachers,
    revisions, label order, source fingerprint) and a short dataset card, so others can distil from the same teachers.
    """
    from datasets import load_from_disk

    manifest = read_manifest(dataset_dir)
    if manifest is None:
        raise HubPushError(
            f"{dataset_dir} holds no finished teacher-logits cache ({MANIFEST_NAME} is missing): label it with "
            "tmkd_hf.label_with_teachers(..., output_dir=...) first."
        )
    token = require_token(token, dataset_dir)
    dataset = load_from_disk(str(dataset_dir))
    with tempfile.TemporaryDirectory(prefix="tmkd-logits-push-") as staging:
        data_dir = Path(staging) / "data"
        data_dir.mkdir()
        dataset.to_parquet(str(data_dir / f"{split}-00000-of-00001.parquet"))
        (Path(staging) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        (Path(staging) / "README.md").write_text(_teacher_logits_card(manifest, split, len(dataset)))
        repo_id = create_repo(repo_id, token=token, private=private, repo_type="dataset", saved_dir=dataset_dir)
        with hub_errors("upload the teacher logits to the Hub dataset", repo_id, dataset_dir):
            return HfApi().upload_folder(
                repo_id=repo_id, repo_type="dataset", folder_path=staging, commit_message=commit_message, token=token
            )


def _teacher_logits_card(manifest: dict, split: str, num_rows: int) -> str:
    teachers = TeacherInfo.from_manifest(manifest)
    lines = [
        "---",
        "tags:",
        "- knowledge-distillation",
        "- tmkd",
        "- teacher-logits",
        "configs:",
        "- config_name: default",
        "  data_files:",
        f"  - split: {split}",
        f"    path: data/{split}-*.parquet",
        "---",
        "",
        "# Teacher soft labels for TMKD",
        "",
        f"{num_rows} rows labelled by {len(teachers)} teacher(s) with `tmkd_hf.label_with_teachers`. The column "
        "`teacher_logits` holds one row of logits per teacher (`[num_teachers, num_labels]`), in the label order "
        f"{manifest.get('label_names')}; text columns {manifest.get('text_columns')}, "
        f"max_length {manifest.get('max_length')}, dtype {manifest.get('dtype')}.",
        "",
        "| # | teacher | source |",
        "|---|---|---|",
        *[f"| {i} | {t.display_name} | {t.source} |" for i, t in enumerate(teachers)],
        "",
        f"`{MANIFEST_NAME}` records the teachers, revisions and weight hashes, and a fingerprint of the source rows.",
        "",
    ]
    return "\n".join(lines)


# ----- the trainer's side -----


def trainer_card_data(
    trainer,
    language: str | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    **unknown,
) -> StudentCardData:
    """A copy of `trainer.model_card_data` completed with what the trainer knows, and `Trainer.create_model_card`'s
    arguments (`finetuned_from` -> base model, `dataset_tags` / `dataset_args` / `dataset` -> dataset id, config
    and name, as `run_glue.py` passes them). A misspelt argument is an error, not a card without it."""
    if unknown:
        accepted = "language, license, tags, model_name, finetuned_from, tasks, dataset_tags, dataset, dataset_args"
        raise TypeError(
            f"create_model_card / push_to_hub got unknown argument(s) {sorted(unknown)}; the model card takes "
            f"{accepted} (and push_to_hub also commit_message, blocking, token, revision, private, "
            "replace_existing_model)."
        )
    data = dataclasses.replace(trainer.model_card_data)
    student = trainer.accelerator.unwrap_model(trainer.model)
    config = getattr(student, "config", None)
    args = trainer.args

    def first(value):
        return value[0] if isinstance(value, (list, tuple)) and value else value

    data.model_id = data.model_id or trainer.hub_model_id or args.hub_model_id
    data.model_name = model_name or data.model_name
    data.language = language or data.language
    data.license = license or data.license
    data.tags = list(dict.fromkeys([*data.tags, *([tags] if isinstance(tags, str) else tags or [])]))
    data.base_model = finetuned_from or data.base_model
    if isinstance(first(tasks), str) and first(tasks):
        data.pipeline_tag = first(tasks)
    data.dataset_id = first(dataset_tags) or data.dataset_id
    data.dataset_config = first(dataset_args) or data.dataset_config
    data.dataset_name = first(dataset) or data.dataset_name

    if config is not None:
        name_or_path = getattr(config, "_name_or_path", None)
        if data.base_model is None and _is_hub_id(name_or_path):
            data.base_model = name_or_path
        data.model_type = data.model_type or getattr(config, "model_type", None)
        data.num_layers = data.num_layers or next(
            (getattr(config, k) for k in ("num_hidden_layers", "n_layers", "num_layers") if hasattr(config, k)), None
        )
        inner = student.model if isinstance(student, MultiHeadStudent) else student
        if isinstance(student, MultiHeadStudent) and student.readout == "mean":
            data.readout = "mean"
            data.architecture = data.architecture or (
                f"CrossEncoder ({type(inner.base_model).__name__} + mean pooling + Dense)"
            )
        data.architecture = data.architecture or type(inner).__name__
        if data.label_names is None and getattr(config, "id2label", None):
            data.label_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if data.num_parameters is None:
        data.num_parameters = published_num_parameters(student)

    if isinstance(student, MultiHeadStudent):
        num_heads, weights = student.num_heads, [round(w, 6) for w in student.head_weights.tolist()]
        data.num_parameters_all_heads = data.num_parameters_all_heads or sum(p.numel() for p in student.parameters())
    else:
        num_heads, weights = 1, None
    data.num_heads = data.num_heads or num_heads
    if not data.teachers:
        train_dataset = getattr(trainer, "train_dataset", None)
        manifest = read_manifest(train_dataset) if hasattr(train_dataset, "info") else None
        data.teachers = TeacherInfo.from_manifest(manifest)
        if not data.teachers and trainer.teachers:
            data.teachers = [
                TeacherInfo(getattr(t.config, "_name_or_path", None) or f"online teacher {i}")
                for i, t in enumerate(trainer.teachers)
            ]
    if not data.distillation and hasattr(args, "alpha"):
        num_teachers = len(data.teachers) or num_heads
        soft = args.soft_loss
        data.distillation = {
            "alpha (weight of the teacher loss)": args.alpha,
            "soft_loss": soft,
            "temperature": args.temperature if soft != "mse" else None,
            "t2_scaling": args.t2_scaling if soft != "mse" else None,
            "student heads": num_heads,
            "teacher_weights": weights or (args.normalized_teacher_weights(num_teachers) if num_teachers > 1 else None),
            "teacher_aggregation": args.teacher_aggregation if num_heads == 1 and num_teachers > 1 else None,
        }
    if not data.train_datasets:
        train_dataset = getattr(trainer, "train_dataset", None)
        if train_dataset is not None and hasattr(train_dataset, "__len__"):
            info = getattr(train_dataset, "info", None)
            data.train_datasets = [
                {
                    "name": getattr(info, "dataset_name", None) or data.dataset_name or "train_dataset",
                    "config": getattr(info, "config_name", None),
                    "rows": len(train_dataset),
                    "teacher_logits": "cached (label_with_teachers)"
                    if "teacher_logits" in (getattr(train_dataset, "column_names", None) or [])
                    else None,
                }
            ]
    return data


def published_num_parameters(model) -> int | None:
    """Parameters of the published model: a multi-head student counts its merged head once."""
    try:
        total = sum(p.numel() for p in model.parameters())
    except AttributeError:
        return None
    if isinstance(model, MultiHeadStudent):
        head = model.head
        per_head = head.in_features * head.out_features + (head.out_features if head.bias is not None else 0)
        total -= (model.num_heads - 1) * per_head
    return total


def trainer_create_model_card(trainer, **kwargs):
    if not trainer.is_world_process_zero():
        return None
    data = trainer_card_data(trainer, **kwargs)
    return write_model_card(trainer.args.output_dir, data, trainer.model_card_template_path)


def trainer_init_hf_repo(trainer, token=None, private: bool | None = None, saved_dir=None) -> None:
    """`Trainer.init_hf_repo` with a token check and clear errors."""
    if not trainer.is_world_process_zero():
        return
    repo_name = trainer.args.hub_model_id or Path(trainer.args.output_dir).absolute().name
    token = token if token is not None else trainer.args.hub_token
    private = private if private is not None else trainer.args.hub_private_repo
    trainer.hub_model_id = create_repo(repo_name, token=token, private=private, saved_dir=saved_dir)
    trainer.push_in_progress = None


def trainer_push_to_hub(
    trainer,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    replace_existing_model: bool = False,
    **kwargs,
):
    """`Trainer.push_to_hub`, reordered so nothing is lost: save the merged model, tokenizer and card locally
    first, then create the repo and upload (any failure is a `HubPushError` naming the saved folder)."""
    args = trainer.args
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    token = token if token is not None else args.hub_token
    trainer.save_model(_internal_call=True)  # every process (FSDP / DeepSpeed gather); writes the merged student
    if not trainer.is_world_process_zero():
        return None
    output_dir = args.output_dir
    repo_id = trainer.hub_model_id or args.hub_model_id or Path(output_dir).absolute().name
    kwargs.setdefault("model_name", repo_id.split("/")[-1])
    tags = kwargs.get("tags")
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    for tag in getattr(trainer.model, "model_tags", None) or []:
        if tag not in tags:
            tags.append(tag)
    kwargs["tags"] = tags
    trainer.create_model_card(**kwargs)
    token = require_token(token, output_dir)
    if trainer.hub_model_id is None:
        trainer_init_hf_repo(trainer, token=token, private=private, saved_dir=output_dir)
        if trainer.hub_model_id != repo_id:  # the namespace was added by the Hub: name it in the card's snippet
            trainer.create_model_card(**kwargs)
    trainer._finish_current_push()
    return upload_student_folder(
        output_dir,
        trainer.hub_model_id,
        token=token,
        revision=revision if revision is not None else args.hub_revision,
        commit_message=commit_message,
        run_as_future=not blocking,
        ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"],
        replace_existing_model=replace_existing_model,
    )


def trainer_push_multihead_checkpoint(trainer, checkpoint_folder: str) -> None:
    """`Trainer._push_from_checkpoint` for a multi-head student: the repo root gets the *merged* plain model (built
    from the checkpoint's files, so it works under any distribution strategy); `last-checkpoint/` (or
    `checkpoint-N/`) gets the checkpoint itself, with every head, for `resume_from_checkpoint`."""
    args = trainer.args
    if not trainer.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
        return
    if not args.hub_always_push and trainer.push_in_progress is not None and not trainer.push_in_progress.is_done():
        return
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    output_dir = args.output_dir
    MultiHeadStudent.from_pretrained(checkpoint_folder).save_pretrained(output_dir, merged=True)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    import torch

    torch.save(args, os.path.join(output_dir, TRAINING_ARGS_NAME))
    if args.save_strategy == SaveStrategy.STEPS:
        commit_message = f"Training in progress, step {trainer.state.global_step}"
    else:
        commit_message = f"Training in progress, epoch {int(trainer.state.epoch)}"
    api = HfApi()
    jobs = [
        api.upload_folder(
            repo_id=trainer.hub_model_id,
            folder_path=output_dir,
            commit_message=commit_message,
            token=args.hub_token,
            run_as_future=True,
            ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"],
            revision=args.hub_revision,
        )
    ]
    if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        path_in_repo = (
            "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
        )
        jobs.append(
            api.upload_folder(
                repo_id=trainer.hub_model_id,
                folder_path=checkpoint_folder,
                path_in_repo=path_in_repo,
                commit_message=commit_message + ", checkpoint",
                token=args.hub_token,
                run_as_future=True,
                revision=args.hub_revision,
            )
        )
    if trainer.push_in_progress is None or trainer.push_in_progress.is_done():
        trainer.push_in_progress = PushInProgress(jobs)
    else:
        trainer.push_in_progress.jobs.extend(jobs)
