"""Adapters: the registry of initialisation methods built with PEFT (`methods`) and their
export as plain PEFT adapters of the base DT (`export`)."""
