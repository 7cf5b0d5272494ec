"""Teachers in, hybrids out: loading Hugging Face teachers and transferring their weights."""

from .teacher import SUPPORTED_FAMILIES, Teacher, load_teacher, teacher_config
from .transfer import build_student, linear_from_attention, student_config

__all__ = ["SUPPORTED_FAMILIES", "Teacher", "build_student", "linear_from_attention", "load_teacher",
           "student_config", "teacher_config"]
