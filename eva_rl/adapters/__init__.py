"""Adapters: the registry of initialisation methods built with PEFT (`methods`), their
export as plain PEFT adapters of the base DT (`export`) and whether an adapter or a rank fits
a model (`fit`)."""
