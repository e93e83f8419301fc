"""tmkd_hf: Two-stage Multi-teacher Knowledge Distillation (TMKD) as a Hugging Face Trainer extension."""

__version__ = "0.1.0"

from .arguments import DistillationArguments
from .collator import DataCollatorWithTeacherLogits
from .initialization import student_from_teacher_layers
from .labelling import label_with_teachers
from .modeling import MultiHeadStudent
from .trainer import MultiTeacherDistillationTrainer

__all__ = [
    "DataCollatorWithTeacherLogits",
    "DistillationArguments",
    "MultiHeadStudent",
    "MultiTeacherDistillationTrainer",
    "label_with_teachers",
    "student_from_teacher_layers",
]
