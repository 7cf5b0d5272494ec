"""The names `hybridize bench` takes, apart from the code that runs them: the command line reads them without
importing torch."""

VARIANTS = ("hybrid", "teacher-engine", "teacher-hf")  # the default set
# the same engines with fused input projections (hybridize.mixers.fusion): `--variants hybrid,hybrid-fused` measures
# the fusion side by side in one run
FUSED = ("hybrid-fused", "teacher-engine-fused")
ALL_VARIANTS = VARIANTS + ("hybrid-intra",) + FUSED
DTYPE_NAMES = ("bfloat16", "float16", "float32")
