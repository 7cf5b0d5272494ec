"""The teachers' recipes live with the other from-scratch recipes (`hybridize.pretrain.teachers`: each size is also
the pretrain preset `teacher-<size>`); importable from here too."""

from ..pretrain.teachers import SIZES, TeacherRecipe, teacher_recipe

__all__ = ["SIZES", "TeacherRecipe", "teacher_recipe"]
