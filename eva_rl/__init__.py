"""eva_rl: fine-tune pretrained Decision-Transformer agents with parameter-efficient adapters."""

__version__ = "0.1.0"
