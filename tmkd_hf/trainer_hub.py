"""What `MultiTeacherDistillationTrainer` publishes, and when: the merged student, its card, its checkpoints.

[`TrainerHubMixin`] holds the trainer's Hub behaviour so that `trainer.py` stays about training; the Hub I/O itself
(creating a repo, uploading a folder, the errors) is `tmkd_hf.hub`. The local save always comes first: a failed push
raises a `HubPushError` that names the cause and the folder where everything is already saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import HfApi
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy
from transformers.utils import PushInProgress

from . import hub
from .model_card import write_model_card
from .modeling import MultiHeadStudent

# What stays local when `output_dir` is uploaded (as `Trainer.push_to_hub`): private files and training checkpoints.
IGNORE_PATTERNS = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]


class TrainerHubMixin:
    """The Hub side of [`MultiTeacherDistillationTrainer`], mixed in before `transformers.Trainer`.

    `Trainer` publishes whatever the model saves, in the order repo, save, upload; a multi-head student publishes
    its *merged* plain model (every head stays in the checkpoints) and its TMKD card, saved before anything is sent.
    """

    def create_model_card(self, **kwargs):
        """Write `output_dir/README.md` from `model_cards/` with this run's data (see `tmkd_hf.model_card`).

        Overrides `Trainer.create_model_card`, whose generic card knows nothing of teachers, heads or soft labels.
        Accepts its arguments (`language`, `license`, `tags`, `model_name`, `finetuned_from`, `tasks`,
        `dataset_tags`, `dataset`, `dataset_args`; see `StudentCardData.from_trainer`); returns the `ModelCard`.
        """
        if not self.is_world_process_zero():
            return None
        data = self.model_card_data_class.from_trainer(self, **kwargs)
        return write_model_card(self.args.output_dir, data, self.model_card_template_path)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the repo (`Trainer.__init__` with `push_to_hub=True`) through `tmkd_hf.hub.create_repo`.

        Overrides `Trainer.init_hf_repo`, which fails with huggingface_hub's raw error; ours names the cause (no
        token, no network, no write access) in a `HubPushError`.
        """
        if not self.is_world_process_zero():
            return
        repo_id = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        token = token if token is not None else self.args.hub_token
        private = private if private is not None else self.args.hub_private_repo
        self.hub_model_id = hub.create_repo(repo_id, token=token, private=private)
        self.push_in_progress = None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        replace_existing_model: bool = False,
        **kwargs,
    ):
        """Save the merged student, tokenizer and card to `output_dir`, then create the repo and upload them.

        Overrides `Trainer.push_to_hub`, which creates the repo before it saves (a missing token or an unreachable Hub
        would lose the model) and uploads into any repo. Failures raise `tmkd_hf.hub.HubPushError` naming the cause
        and the saved folder. A repo that already holds a different model is refused unless
        `replace_existing_model=True`; other kwargs go to `create_model_card`.
        """
        args = self.args
        self.callback_handler.on_push_begin(args, self.state, self.control)
        token = token if token is not None else args.hub_token
        self.save_model(_internal_call=True)  # every process (FSDP / DeepSpeed gather); writes the merged student
        if not self.is_world_process_zero():
            return None
        output_dir = args.output_dir
        repo_id = self.hub_model_id or args.hub_model_id or Path(output_dir).absolute().name
        kwargs.setdefault("model_name", repo_id.split("/")[-1])
        tags = kwargs.get("tags")
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        for tag in getattr(self.model, "model_tags", None) or []:
            if tag not in tags:
                tags.append(tag)
        kwargs["tags"] = tags
        self.create_model_card(**kwargs)
        token = hub.require_token(token, output_dir)
        if self.hub_model_id is None:
            private = private if private is not None else args.hub_private_repo
            self.hub_model_id = hub.create_repo(repo_id, token=token, private=private, saved_dir=output_dir)
            self.push_in_progress = None
            if self.hub_model_id != repo_id:  # the namespace was added by the Hub: name it in the card's snippet
                self.create_model_card(**kwargs)
        self._finish_current_push()
        return hub.upload_student_folder(
            output_dir,
            self.hub_model_id,
            token=token,
            revision=revision if revision is not None else args.hub_revision,
            commit_message=commit_message,
            run_as_future=not blocking,
            ignore_patterns=IGNORE_PATTERNS,
            replace_existing_model=replace_existing_model,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """`Trainer` copies a checkpoint's weight files to the repo root; a multi-head checkpoint is merged first."""
        if not isinstance(self.accelerator.unwrap_model(self.model), MultiHeadStudent):
            return super()._push_from_checkpoint(checkpoint_folder)
        self._push_multi_head_checkpoint(checkpoint_folder)

    def _push_multi_head_checkpoint(self, checkpoint_folder: str) -> None:
        """`Trainer._push_from_checkpoint` for a multi-head student: the repo root gets the *merged* plain model (built
        from the checkpoint's files, so it works under any distribution strategy); `last-checkpoint/` (or
        `checkpoint-N/`) gets the checkpoint itself, with every head, for `resume_from_checkpoint`."""
        args = self.args
        if not self.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
            return
        if not args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(args, self.state, self.control)
        output_dir = args.output_dir
        MultiHeadStudent.from_pretrained(checkpoint_folder).save_pretrained(output_dir, merged=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if args.save_strategy == SaveStrategy.STEPS:
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch)}"
        api = HfApi()
        jobs = [
            api.upload_folder(
                repo_id=self.hub_model_id,
                folder_path=output_dir,
                commit_message=commit_message,
                token=args.hub_token,
                run_as_future=True,
                ignore_patterns=IGNORE_PATTERNS,
                revision=args.hub_revision,
            )
        ]
        if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            path_in_repo = (
                "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
            )
            jobs.append(
                api.upload_folder(
                    repo_id=self.hub_model_id,
                    folder_path=checkpoint_folder,
                    path_in_repo=path_in_repo,
                    commit_message=commit_message + ", checkpoint",
                    token=args.hub_token,
                    run_as_future=True,
                    revision=args.hub_revision,
                )
            )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)
