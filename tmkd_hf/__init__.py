"""tmkd_hf: Two-stage Multi-teacher Knowledge Distillation (TMKD) as a Hugging Face Trainer extension."""

__version__ = "0.1.0"

from .arguments import DistillationArguments
from .collator import DataCollatorWithTeacherLogits
from .initialization import student_from_teacher_layers
from .labelling import label_with_teachers, load_teacher_logits, read_manifest
from .modeling import MultiHeadStudent
from .teachers import TeacherSpec
from .trainer import MultiTeacherDistillationTrainer

__all__ = [
    "DataCollatorWithTeacherLogits",
    "DistillationArguments",
    "MultiHeadStudent",
    "MultiTeacherDistillationTrainer",
    "TeacherSpec",
    "label_with_teachers",
    "load_teacher_logits",
    "read_manifest",
    "student_from_teacher_layers",
]
