"""The names `hybridize bench` takes, apart from the code that runs them: the command line reads them without
importing torch."""

VARIANTS = ("hybrid", "teacher-engine", "teacher-hf")  # the default set
# the same engines with fused input projections (hybridize.mixers.fusion): `--variants hybrid,hybrid-fused` measures
# the fusion side by side in one run
FUSED = ("hybrid-fused", "teacher-engine-fused")
# fused projections and every decode matmul through our split-K GEMV (`model.decode_gemv`, hybridize.mixers.kernels):
# beside the -fused ones, the GEMV is the only difference
GEMV = ("hybrid-gemv", "teacher-engine-gemv")
# fused projections and the one-kernel decode paths (`model.decode_steps`, hybridize.mixers.kernels.fused_steps: a
# linear mixer's token, the attention prologue, add + norm): beside the -fused ones, those are the only difference
STEPS = ("hybrid-steps", "teacher-engine-steps")
ALL_VARIANTS = VARIANTS + ("hybrid-intra",) + FUSED + GEMV + STEPS
DTYPE_NAMES = ("bfloat16", "float16", "float32")
