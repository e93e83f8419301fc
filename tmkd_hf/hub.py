"""Publishing students (and teacher soft labels) on the Hugging Face Hub, with errors that say what to do.

What gets published is the **merged plain student**: `config.json` + `model.safetensors` + tokenizer + model card,
loadable with `AutoModelForSequenceClassification` / `pipeline("text-classification")` without tmkd_hf. The local
save always happens first, so a failed push (no token, a repo holding another model, a network or server error)
raises a [`HubPushError`] that names the cause and the folder where everything is already saved.

Hub I/O only: creating a repo ([`create_repo`], which checks the token), refusing a repo that holds another model
([`check_no_other_model`]), uploading a saved student ([`upload_student_folder`]) or a teacher soft-label cache
([`push_teacher_logits_to_hub`]), and the errors. When and what the trainer publishes is the trainer's
(`tmkd_hf.trainer_hub`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import HfApi, get_token

from . import model_card
from .model_card import StudentCardData, TeacherInfo
from .modeling import STUDENT_CONFIG_NAME
from .soft_label_cache import MANIFEST_NAME, read_manifest

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


# ----- names that moved out of this module (the trainer's side is the trainer's, in tmkd_hf.trainer_hub) -----


def _moved(old: str, new: str) -> None:
    warnings.warn(f"tmkd_hf.hub.{old} is deprecated: use {new}.", FutureWarning, stacklevel=3)


def trainer_card_data(trainer, **kwargs) -> StudentCardData:
    """Deprecated alias of [`StudentCardData.from_trainer`]."""
    _moved("trainer_card_data", "tmkd_hf.model_card.StudentCardData.from_trainer(trainer, ...)")
    return StudentCardData.from_trainer(trainer, **kwargs)


def published_num_parameters(model) -> int | None:
    """Deprecated alias of [`tmkd_hf.model_card.published_num_parameters`]."""
    _moved("published_num_parameters", "tmkd_hf.model_card.published_num_parameters")
    return model_card.published_num_parameters(model)
