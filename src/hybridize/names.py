"""Names users type, as plain data: the config, the recipes and the command line validate against them without
importing torch or any mixer code. `hybridize.mixers.MIXERS` registers a class under each (a test keeps the two in
step)."""

# The linear mixers (METHODS.md, "The design space"): Lightning (HypeNet), the six variants of the hybrid
# linear-attention study (HGRN, RetNet, GLA, HGRN-2, DeltaNet, GatedDeltaNet) and Mamba-2.
LINEAR_MIXER_NAMES = ("lightning", "gated_deltanet", "gla", "deltanet", "hgrn", "hgrn2", "retnet", "mamba2")

# How an intra-layer block joins its attention and linear branches before the output projection (METHODS.md, the
# fusion study): concat (each head's output in its place; any split), subtract / sum (attention - or + linear), gate
# (a learned per-channel mix sigmoid(x Wz) * attention + (1 - sigmoid(x Wz)) * linear); the last three need branches of
# one width.
INTRA_FUSIONS = ("concat", "subtract", "sum", "gate")

# How a hybrid trained from scratch mixes attention in (hybridize.pretrain.layout): whole layers ("inter") or KV-head
# groups inside every layer ("intra"); where inter-layer attention goes.
LAYER_FUSIONS = ("inter", "intra")
PLACEMENTS = ("uniform", "middle")
