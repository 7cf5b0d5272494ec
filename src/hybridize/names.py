"""Names users type, as plain data: the config, the recipes and the command line validate against them without
importing torch or any mixer code. `hybridize.mixers.MIXERS` registers a class under each (a test keeps the two in
step)."""

# The linear mixers (METHODS.md, "The design space"): Lightning (HypeNet), the six variants of the hybrid
# linear-attention study (HGRN, RetNet, GLA, HGRN-2, DeltaNet, GatedDeltaNet) and Mamba-2.
LINEAR_MIXER_NAMES = ("lightning", "gated_deltanet", "gla", "deltanet", "hgrn", "hgrn2", "retnet", "mamba2")
