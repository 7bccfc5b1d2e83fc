"""Training: the loop shared by pretraining and fine-tuning (`loop`: checkpoints, resume,
TensorBoard), `pretrain` (a DT from scratch) and `finetune` (one method on one task)."""
