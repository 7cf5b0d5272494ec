"""A stage's models are released when it returns: `convert` runs every stage in one process, and a student (with its
optimizer state) still alive would sit on the GPU through the next stage."""

import gc
import weakref
from importlib import resources

from hybridize.models import HybridForCausalLM
from hybridize.pipeline import load_recipe
from hybridize.pipeline.stages import Conversion, align, distill, select


def test_each_stage_releases_its_models_on_return(tmp_path, monkeypatch):
    built = []
    init = HybridForCausalLM.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(weakref.ref(self))

    monkeypatch.setattr(HybridForCausalLM, "__init__", tracked)
    recipe = load_recipe("smoke")
    recipe.align.tokens = recipe.align.batch_size * recipe.align.seq_len * 2
    recipe.distill.tokens = recipe.distill.batch_size * recipe.distill.seq_len * 2
    teacher = resources.files("hybridize") / "assets" / "teacher-tiny"
    conv = Conversion(teacher=str(teacher), out=tmp_path / "o", recipe=recipe, device="cpu")
    conv.load_teacher()
    before = sum(r() is not None for r in built)  # the teacher, if it is of our class
    gc.disable()  # only the stage's own release may free them
    try:
        for stage in (align, select, distill):
            stage(conv)
            alive = sum(r() is not None for r in built)
            assert alive == before, f"{stage.__name__}: {alive - before} of its models still alive after it returned"
    finally:
        gc.enable()
    assert len(built) > before  # the stages did build students
