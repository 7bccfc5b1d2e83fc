"""Each rollout slot's context window, kept as the DT's first-layer tokens, and the forward pass
that computes only what the next action needs.

The DT's input for a step t is the token sequence (R, s, a) of the last K steps. A token's
first-layer input (its embedding plus timestep embedding, `embed_ln`, plus the encoder's
position embedding) depends on that token alone, so each slot's window is kept as those tokens
and every env step only embeds the three new ones (the previous action, the return-to-go and
the state) and shifts the window, instead of re-gathering and re-embedding K steps. The
trailing action token of the current step is left out: under the causal mask no state token
attends to it. In the last block only the last state token's query, projection, MLP, `ln_f`
and action head are computed (its keys and values still need every token).

The forward calls the model's submodules (`block.attn.c_attn(x)`, `block.mlp(x)`, ...), never
their weights, so an unmerged PEFT model (LoRA layers wrapping them) computes what its full
forward computes; attention is `scaled_dot_product_attention` with transformers' own scaling
and head split, whatever attention function the config names for training. Windows shorter
than K are left-padded; padded tokens are masked as keys (each attends only to itself, so it
stays finite), so a slot's action does not depend on the other slots in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from eva_rl.agent import Agent


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The DecisionTransformerModel inside a PEFT model (its adapted layers still wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ContextWindows:
    """The last K steps of every slot as first-layer tokens: (slots, 3K-1, hidden), newest last.

    `start` opens a slot's episode with its first state and target return; `push` adds a step
    (the action taken, the reward it earned, the next state); `actions` runs the forward for
    some slots. Returns-to-go are kept in float32 exactly as the segment sampler computes them.
    """

    def __init__(self, agent: Agent, slots: int, device: torch.device):
        self.model = base_model(agent.model)
        meta, config = agent.meta, self.model.config
        self.device, self.return_scale = device, meta.return_scale
        self.length = 3 * meta.context_length - 1
        self.last_t = config.max_ep_len - 1  # the timestep embedding has max_ep_len rows
        self.mean = torch.as_tensor(meta.state_mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(meta.state_std, dtype=torch.float32, device=device)
        self.tokens = torch.zeros(slots, self.length, config.hidden_size, device=device)
        self.real = torch.zeros(slots, dtype=torch.long, device=device)  # real tokens per slot
        self.rtg = torch.zeros(slots, dtype=torch.float32, device=device)  # scaled
        self.t = torch.zeros(slots, dtype=torch.long, device=device)
        positions = torch.arange(self.length, device=device)
        self._positions = positions
        self._causal = positions[:, None] >= positions[None, :]
        self._eye = torch.eye(self.length, dtype=torch.bool, device=device)

    def start(self, slots: torch.Tensor, states: torch.Tensor, targets: list[float]) -> None:
        """New episodes in `slots`: first (raw) states and target returns (unscaled)."""
        self.tokens[slots] = 0
        self.real[slots] = 2
        self.t[slots] = 0
        scaled = [target / self.return_scale for target in targets]  # in float64, then rounded
        self.rtg[slots] = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)
        self.tokens[slots, -2:] = self._embed(slots, states, None)

    def push(self, slots, actions, rewards, states) -> None:
        """One env step in each of `slots`: the action taken, its reward, the next raw state."""
        self.tokens[slots] = self.tokens[slots].roll(-3, dims=1)
        self.real[slots] = (self.real[slots] + 3).clamp(max=self.length)
        self.t[slots] += 1
        scaled = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.rtg[slots] = self.rtg[slots] - scaled / self.return_scale
        self.tokens[slots, -3:] = self._embed(slots, states, actions)

    def _embed(self, slots, states, actions) -> torch.Tensor:
        """The first-layer tokens of step t (R_t, s_t), preceded by a_{t-1} when given."""
        m = self.model
        t = self.t[slots].clamp(max=self.last_t)
        time = m.embed_timestep(t)
        states = (torch.as_tensor(states, device=self.device) - self.mean) / self.std
        returns = _rows(m.embed_return, self.rtg[slots, None])
        parts = [returns + time, _rows(m.embed_state, states) + time]
        if actions is not None:
            before = m.embed_timestep((self.t[slots] - 1).clamp(max=self.last_t))
            action = torch.as_tensor(actions, device=self.device)
            parts.insert(0, _rows(m.embed_action, action) + before)
        tokens = m.embed_ln(torch.stack(parts, dim=1))
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        return tokens + m.encoder.wpe(zero)  # the encoder's position embedding (all position 0)

    def actions(self, slots: torch.Tensor) -> torch.Tensor:
        """The action head's output for the last state token of each of `slots`: (B, act_dim)."""
        x, real = self.tokens[slots], self.real[slots]
        key_real = self._positions >= self.length - real[:, None]  # (B, L)
        mask = None
        if not bool(key_real.all()):
            mask = ((self._causal & key_real[:, None, :]) | self._eye)[:, None]  # (B, 1, L, L)
        encoder = self.model.encoder
        for block in encoder.h[:-1]:
            x = _block(block, x, mask)
        tail = (self._causal[-TAIL:] & key_real[:, None, :])[:, None]  # (B, 1, TAIL, L)
        x = _block(encoder.h[-1], x, tail, TAIL)[:, -1]
        return _rows(lambda z: self.model.predict_action(encoder.ln_f(z)), x)


TAIL = 2  # queries of the last block: R_t and s_t (one query would take another SDPA kernel)
MIN_ROWS = 16  # below this, CPU GEMM kernels (gemv, small-M paths) sum in another order


def _rows(fn, x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` for a row-wise `fn`, computed in a call of at least MIN_ROWS rows (zero rows
    added), so a row's result does not depend on how many rows share the call: a slot acts the
    same whatever the batch, and as the full forward (whose products have >= K rows)."""
    rows = x.reshape(-1, x.shape[-1])
    if len(rows) < MIN_ROWS:
        rows = torch.cat([rows, rows.new_zeros(MIN_ROWS - len(rows), rows.shape[1])])
    out = fn(rows)[: x[..., 0].numel()]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _block(block, x: torch.Tensor, mask: torch.Tensor | None, tail: int = 0) -> torch.Tensor:
    """A GPT-2 block (eval mode) over all tokens, or, with `tail`, for the last `tail` tokens'
    outputs only (their queries against every key)."""
    attn = block.attn
    query, key, value = attn.c_attn(block.ln_1(x)).split(attn.split_size, dim=2)
    if tail:
        query, x = query[:, -tail:], x[:, -tail:]
    heads = "b n (h d) -> b h n d"
    query, key, value = (rearrange(z, heads, h=attn.num_heads) for z in (query, key, value))
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=attn.scaling, is_causal=mask is None
    )
    out = rearrange(out, "b h n d -> b n (h d)")
    x = _rows(attn.c_proj, out) + x
    return _rows(lambda z: block.mlp(block.ln_2(z)), x) + x
