"""Teachers we train ourselves (the built-in default of the demo and of our results)."""

from .recipe import SIZES, TeacherRecipe, teacher_recipe
from .train import train_teacher

__all__ = ["SIZES", "TeacherRecipe", "teacher_recipe", "train_teacher"]
