"""The behaviour-cloning loss of a Decision Transformer and the measurements made with it."""

from __future__ import annotations

import torch

from eva_rl.runtime import autocast


def action_preds(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The DT's predicted action at every step of a segment batch: (B, K, act_dim)."""
    return model(
        states=batch["states"],
        actions=batch["actions"],
        returns_to_go=batch["returns_to_go"],
        timesteps=batch["timesteps"],
        attention_mask=batch["attention_mask"],
        return_dict=True,
    ).action_preds


def action_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE between predicted and dataset actions on real (unpadded) steps only, reduced in fp32
    whatever precision the forward ran in."""
    return action_mse(action_preds(model, batch), batch)


def action_mse(preds: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`action_loss` of predictions already made (B, K, act_dim), reduced in fp32."""
    preds = preds.float()
    mask = batch["attention_mask"].unsqueeze(-1).to(preds.dtype)
    sq = (preds - batch["actions"]) ** 2 * mask
    return sq.sum() / (mask.sum() * batch["actions"].shape[-1])


@torch.enable_grad()
def gradient_signal(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean over `batches` of the norm of the action-loss gradient with respect to the trainable
    parameters, in eval mode (no dropout). Gradients are cleared afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    norms = []
    for batch in batches:
        grads = torch.autograd.grad(action_loss(model, batch), params, allow_unused=True)
        norms.append(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])
            )
        )
    model.train(was_training)
    return torch.stack(norms).mean().item()


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], precision: str = "fp32"
) -> float:
    """Mean action loss over fixed held-out batches, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with autocast(device, precision):
        losses = [action_loss(model, batch) for batch in batches]
    model.train(was_training)
    return torch.stack(losses).mean().item()
