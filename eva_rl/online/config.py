"""`eva-rl online`'s settings: one validated dataclass, each default with its source.

"ODT" below is the Online Decision Transformer's reference code (facebookresearch/online-dt,
`main.py` arguments); where eva_rl keeps its own fine-tuning default instead, the comment says
why. The settings shared with `eva-rl finetune` (base, data, method, EVA's collector, evaluation,
seed and execution) are its `AdaptedRunConfig`, so they mean the same thing in both commands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from eva_rl.errors import UserError
from eva_rl.online.buffer import DEFAULT_CAPACITY
from eva_rl.online.policy import INIT_TEMPERATURE
from eva_rl.training.finetune import AdaptedRunConfig
from eva_rl.training.loop import OptimConfig

Policy = Literal["stochastic", "deterministic"]


@dataclass
class TD3Config:
    """TD3 gradients added to ODT's fine-tuning (Yan, Schwing, Wang, NeurIPS 2024, "RL Gradients
    as Vitamin for Online Finetuning Decision Transformers"), off by default. Defaults are the
    reference code's (KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers, `get_args.py`
    arguments, used by `main.py` and `trainer.py`); see eva_rl/online/critic.py for the recipe."""

    enabled: bool = False  # add TD3's critic and actor term (off: no critic, the update as before)
    coef: float = 0.1  # weight of -Q in the policy loss: --actor_rl_coeff 0.1 (README: 0.1)
    normalize: bool = False  # divide coef by mean |Q| of the batch: --normalized_rl_coeff 0
    gamma: float = 0.99  # discount of the critic's TD target: --gamma 0.99
    tau: float = 0.005  # Polyak rate of the critic's and the policy's targets: --TD3_tau
    policy_noise: float = 0.2  # std of the target-action smoothing noise: --TD3_policy_noise
    noise_clip: float = 0.5  # the smoothing noise clipped to +-this: --TD3_noise_clip
    # critic steps per policy step (delayed actor): --num_actor_update_interval 2 (the README's
    # MuJoCo commands keep it; its Adroit, AntMaze and Maze2D commands pass 1)
    actor_interval: int = 2
    lr: float = 1e-3  # critic AdamW (torch defaults otherwise): --critic_learning_rate 0.001
    hidden: int = 256  # critic.py Q_Critic: two Linear(256) ReLU layers per Q, twin Q
    # main.py: layer norm (no affine) after each hidden layer, except on MuJoCo locomotion
    # (hopper, walker2d, halfcheetah, ant), where `with_layernorm` is off
    layernorm: bool = False
    # critic-only steps on the seeded buffer before the first online update. The reference
    # trains its critic alongside offline pretraining (main.py `pretrain`: max_pretrain_iters 1
    # x num_updates_per_pretrain_iter 5000 x num_actor_update_interval 2 = 10,000 steps); the
    # DT arrives here pretrained without one, so 0 (none) unless asked
    warmup: int = 0

    def __post_init__(self):
        checks = {
            "coef": 0 <= self.coef < math.inf,
            "gamma": 0 <= self.gamma < 1,
            "tau": 0 < self.tau <= 1,
            "policy_noise": 0 <= self.policy_noise < math.inf,
            "noise_clip": 0 <= self.noise_clip < math.inf,
            "actor_interval": self.actor_interval >= 1,
            "lr": 0 < self.lr < math.inf,
            "hidden": self.hidden >= 1,
            "warmup": self.warmup >= 0,
        }
        rules = {"coef": ">= 0", "gamma": "in [0, 1)", "tau": "in (0, 1]", "lr": "> 0",
                 "policy_noise": ">= 0", "noise_clip": ">= 0", "actor_interval": ">= 1",
                 "hidden": ">= 1", "warmup": ">= 0"}  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            raise UserError(f"td3.{k} must be finite and {rules[k]}, got {getattr(self, k)}")


@dataclass
class OnlineConfig(AdaptedRunConfig):
    """The run settings of `AdaptedRunConfig` (an adapter trains with the policy's head; ODT
    evaluates on 10 episodes), then the online loop's."""

    from_run: str | None = None  # a finished `eva-rl finetune` run: start from its agent/
    env_steps: int = 10_000  # online interactions in all (ODT: max_online_iters; 1M from 7e0714f)
    capacity: int = DEFAULT_CAPACITY  # replay buffer, whole trajectories (ODT replay_size 1000)
    rollouts: int = 1  # episodes per env collected per iteration (ODT num_online_rollouts 1)
    updates: int = 300  # gradient updates per iteration (ODT num_updates_per_online_iter 300)
    # exploration return-to-go = rtg_scale times the best offline return of the env (ODT
    # hopper: online_rtg 7200 = 2 x eval_rtg 3600; as far above it for a negative return)
    rtg_scale: float = 2.0
    eval_target_scale: float = 1.0  # evaluation target = this x the best offline return
    # ODT: LAMB, lr 1e-4, weight decay 5e-4, warm-up 10,000 then constant, clip 0.25, batch
    # 256; here AdamW (eva_rl's optimiser), warm-up 100 from an already trained agent, batch 64
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=5e-4, warmup_steps=100)
    )
    # stochastic: ODT's tanh-Gaussian, likelihood - temperature x entropy, sampled exploration.
    # deterministic: the DT's own action, trained by the offline action MSE, explored with
    # N(0, expl_noise) added to it and clamped to the action range: the TD3 reference's `--stoc
    # 0 --use_entropy_reg 0 --actor_sup_coeff 1`, which its README runs with TD3 everywhere
    # (with `td3.enabled` off it is online behaviour cloning, a configuration it does not run)
    policy: Policy = "stochastic"
    # std of the deterministic policy's exploration noise on [-1, 1] actions: TD3's
    # `--expl_noise 0.1` (Fujimoto et al.); the reference passes it as `noise_level`
    expl_noise: float = 0.1
    init_temperature: float = INIT_TEMPERATURE  # ODT init_temperature 0.1
    temperature_lr: float = 1e-4  # ODT: Adam(lr=1e-4, betas=(0.9, 0.999)) on log temperature
    target_entropy: float | None = None  # None: -act_dim (ODT)
    eval_every: int = 1000  # env steps between evaluations (ODT: every 10 iterations)
    save_every: int = 10  # iterations between checkpoints (what a resume restarts from)
    log_every: int = 50  # updates between training-loss logs
    td3: TD3Config = field(default_factory=TD3Config)  # RL gradients for low-return data (off)

    def __post_init__(self):
        super().__post_init__()
        names = ("env_steps", "capacity", "rollouts", "eval_every", "save_every", "log_every")
        positive = {k: getattr(self, k) for k in names}
        bad = [f"{k}={v}" for k, v in positive.items() if v < 1]
        if bad or self.updates < 0:
            raise UserError(f"online: {', '.join(bad) or 'updates'} must be >= 1 (updates >= 0)")
        if not all(math.isfinite(x) for x in (self.rtg_scale, self.eval_target_scale)):
            raise UserError("rtg_scale and eval_target_scale must be finite")
        if not 0 <= self.expl_noise < math.inf:
            raise UserError(f"expl_noise must be finite and >= 0, got {self.expl_noise}")
        if not (0 < self.init_temperature < math.inf and 0 < self.temperature_lr < math.inf):
            raise UserError("init_temperature and temperature_lr must be finite and > 0")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise UserError(f"target_entropy must be finite, got {self.target_entropy}")

    @property
    def stochastic(self) -> bool:
        """ODT's Gaussian policy (head, temperature, sampled exploration), else the DT's own."""
        return self.policy == "stochastic"
