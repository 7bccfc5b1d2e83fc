"""Adapters: the registry of initialisation methods built with PEFT (`methods`) and their
export as plain PEFT adapters of the base DT (`export`). Which layers a target list adapts and
whether a rank or a saved adapter fits a model is `eva_rl.layers`, below the agent and the
collector, which need it too."""
