"""tmkd_hf: Two-stage Multi-teacher Knowledge Distillation (TMKD) as a Hugging Face Trainer extension."""

__version__ = "0.1.0"

from ._allocator import use_fixed_mmap_threshold
from .arguments import DistillationArguments
from .augmentation import augment_pairs, word_neighbours
from .collator import DataCollatorWithTeacherLogits
from .export import OnnxClassifier, export_onnx, quantize_torch_int8
from .hub import HubPushError, push_teacher_logits_to_hub, upload_student_folder
from .initialization import student_from_teacher_layers
from .labelling import label_with_teachers
from .model_card import BaselineResult, FormatSpeed, SpeedMeasurement, StudentCardData, TeacherInfo, write_model_card
from .modeling import MultiHeadStudent
from .peft_student import LoraStudentArguments, apply_lora, merge_lora, merge_student, save_merged_student
from .pool import PoolFileError, resolve_data_files
from .readout import detect_readout
from .soft_label_cache import CacheBusyError, load_teacher_logits, read_manifest
from .tasks import TaskSpec, build_compute_metrics, get_task, load_rows
from .teachers import TeacherSpec, load_classifier
from .trainer import MultiTeacherDistillationTrainer

__all__ = [
    "BaselineResult",
    "CacheBusyError",
    "DataCollatorWithTeacherLogits",
    "DistillationArguments",
    "FormatSpeed",
    "HubPushError",
    "LoraStudentArguments",
    "MultiHeadStudent",
    "MultiTeacherDistillationTrainer",
    "OnnxClassifier",
    "PoolFileError",
    "SpeedMeasurement",
    "StudentCardData",
    "TaskSpec",
    "TeacherInfo",
    "TeacherSpec",
    "apply_lora",
    "augment_pairs",
    "build_compute_metrics",
    "detect_readout",
    "export_onnx",
    "get_task",
    "label_with_teachers",
    "load_classifier",
    "load_rows",
    "load_teacher_logits",
    "merge_lora",
    "merge_student",
    "push_teacher_logits_to_hub",
    "quantize_torch_int8",
    "read_manifest",
    "resolve_data_files",
    "save_merged_student",
    "student_from_teacher_layers",
    "upload_student_folder",
    "use_fixed_mmap_threshold",
    "word_neighbours",
    "write_model_card",
]
