"""Finite or refused, checkpoints that match, bounded YAML (issue 31, classes 3, 4 and 6 in
part): each fault injected for real (a Minari dataset holding NaN, an env returning NaN, NaN
weights and stats, a config.json that disagrees with its weights, an adapter on another base,
an alias bomb, NaN and oversized config numbers), each giving one line and exit code 2 with
nothing written, never a score or a diverged loss."""

import json
import shutil
import time

import gymnasium as gym
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from conftest import HAMMER, tiny_finetune_overrides, tiny_pretrain_overrides, write_minari
from eva_rl.cli import main
from eva_rl.errors import UserError

PENDULUM = "test/pendulum/nan-v0"


def one_line_error(capsys, *fragments, progress: str | None = None) -> str:
    """The error line; with `progress`, after that command's progress bar (its own lines)."""
    err = capsys.readouterr().err.replace("\r", "\n").strip()
    if progress is not None:
        err = "\n".join(x for x in err.splitlines() if x and not x.startswith(progress))
    assert len(err.splitlines()) == 1 and err.startswith("eva-rl: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def pendulum_episode(steps=4, obs=None, act=None, rew=None):
    """(observations, actions, rewards) of a Pendulum-v1 episode, finite unless given."""
    observations = np.zeros((steps + 1, 3)) if obs is None else obs
    actions = np.full((steps, 1), 0.1) if act is None else act
    return observations, actions, [1.0] * steps if rew is None else rew


def evaluate_args(ckpt, tmp_path, *extra):
    return ["evaluate", "--checkpoint", str(ckpt), "--episodes", "1",
            "--out", str(tmp_path / "e.json"), *extra]  # fmt: skip


def nothing_evaluated(tmp_path) -> bool:
    return not (tmp_path / "e.json").exists() and not (tmp_path / "e_tb").exists()


# --- class 3: datasets --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["observations", "actions", "rewards"])
def test_a_dataset_holding_nan_is_refused_naming_file_and_episode_and_listed_broken(
    field, checkpoint, mw_root, tmp_path, capsys
):
    root = tmp_path / "nan"
    bad = {"observations": pendulum_episode(obs=np.r_[np.zeros((2, 3)), [[0, np.nan, 0]],
                                                      np.zeros((2, 3))]),
           "actions": pendulum_episode(act=[[0.1], [np.inf], [0.1], [0.1]]),
           "rewards": pendulum_episode(rew=[1.0, np.nan, 1.0, 1.0])}[field]  # fmt: skip
    write_minari(PENDULUM, gym.make("Pendulum-v1"), [pendulum_episode(), bad], root)
    out = tmp_path / "pretrain"
    args = ["pretrain", *tiny_pretrain_overrides(mw_root, out), f"data_root={root}",
            f"datasets=[{PENDULUM}]", "horizon=5"]  # fmt: skip
    assert main(args) == 2
    step = "at step 2" if field == "observations" else "at step 1"
    one_line_error(capsys, PENDULUM, "main_data.hdf5", f"episode 1's {field} hold", step,
                   "re-record or rebuild")  # fmt: skip
    assert not out.exists()
    finetune = tiny_finetune_overrides(
        checkpoint, root, tmp_path / "ft", "lora", f"datasets=[{PENDULUM}]"
    )
    assert main(["finetune", *finetune]) == 2  # before the checkpoint's shapes are compared
    one_line_error(capsys, PENDULUM, f"episode 1's {field} hold")
    assert not (tmp_path / "ft").exists()
    assert main(["data", "list", "--root", str(root)]) == 0
    listed = capsys.readouterr().out
    assert f"{PENDULUM}: BROKEN:" in listed and f"episode 1's {field}" in listed
    assert "nan [" not in listed  # never a 'return nan'


def test_recording_an_env_that_returns_nan_writes_nothing(tmp_path, capsys):
    class NanAfterTwoSteps(gym.Env):
        observation_space = gym.spaces.Box(-10, 10, (3,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(3, np.float32), {}

        def step(self, action):
            self.t += 1
            obs = np.full(3, np.nan if self.t == 3 else 0.0, np.float32)
            return obs, 1.0, False, False, {}

    gym.register("eva_rl_test/NanAfterTwoSteps-v0", entry_point=NanAfterTwoSteps,
                 max_episode_steps=6)  # fmt: skip
    root = tmp_path / "rec"
    try:
        args = ["data", "record", "--env", "eva_rl_test/NanAfterTwoSteps-v0", "--id",
                "test/nan/rec-v0", "--episodes", "2", "--root", str(root)]  # fmt: skip
        assert main(args) == 2
    finally:
        del gym.registry["eva_rl_test/NanAfterTwoSteps-v0"]
    one_line_error(capsys, "dataset test/nan/rec-v0 was not written",
                   "episode 0's observations hold nan at step 3", progress="record:")  # fmt: skip
    assert not (root / "test").exists() and not list(root.glob(".eva_rl-staging/*"))


def test_actions_outside_the_space_are_warned_about_once_with_the_share(tmp_path):
    from eva_rl.data.segments import load_trajectories

    root = tmp_path / "wide"
    episodes = [pendulum_episode(act=[[50.0], [0.1], [0.1], [-3.0]]), pendulum_episode()]
    write_minari("test/pendulum/wide-v0", gym.make("Pendulum-v1"), episodes, root)
    with pytest.warns(UserWarning) as caught:
        traj = load_trajectories(["test/pendulum/wide-v0"], root)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "25.0% of its actions lie outside its action space [-2, 2]" in message
    assert "the furthest: 50" in message
    assert traj.actions.max() == 50.0  # trained as they are: a warning, not a change


# --- class 3: config numbers --------------------------------------------------------------------


@pytest.mark.parametrize(("override", "fragment"), [
    ("optim.lr=.nan", "config key 'optim.lr' must be a finite number, got nan"),
    ("optim.weight_decay=.nan", "config key 'optim.weight_decay' must be a finite number"),
    ("optim.weight_decay=-1", "optim.weight_decay must be finite and >= 0, got -1.0"),
    ("method.alpha=.inf", "config key 'method.alpha' must be a finite number, got inf"),
    ("method.rho=.nan", "config key 'method.rho' must be a finite number, got nan"),
    ("optim.batch_size=1000000000", "optim.batch_size must be in [1, 65536]"),
    ("collector.batch_size=1000000000", "batch_size must be in [1, 65536], got 1000000000"),
])  # fmt: skip
def test_non_finite_or_unbounded_config_numbers_are_refused(override, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", *tiny_finetune_overrides("ckpt", "root", out, "eva"), override]
    assert main(args) == 2
    one_line_error(capsys, fragment)
    assert not out.exists()


def test_config_classes_refuse_non_finite_numbers_from_python():
    from eva_rl.adapters.methods import MethodConfig
    from eva_rl.eva.collector import CollectorConfig
    from eva_rl.training.loop import OptimConfig

    nan = float("nan")
    cases = [
        (lambda: OptimConfig(lr=nan), "optim.lr and optim.grad_clip must be finite and > 0, "
         "got lr=nan"),
        (lambda: OptimConfig(weight_decay=nan), "optim.weight_decay must be finite and >= 0, "
         "got nan"),
        (lambda: OptimConfig(grad_clip=float("inf")), "must be finite and > 0, got lr=0.0001, "
         "grad_clip=inf"),
        (lambda: MethodConfig(alpha=nan), "method: alpha must be finite and >= 0"),
        (lambda: MethodConfig(rho=nan), "method.rho must be >= 1 (1 = no redistribution), got nan"),
        (lambda: CollectorConfig(rho=nan), "rho must be >= 1 (1 = no redistribution), got nan"),
    ]  # fmt: skip
    for make, message in cases:
        with pytest.raises(UserError) as error:
            make()
        assert message in str(error.value)


@pytest.mark.parametrize(("method", "rank", "fragment"), [
    ("lora", 1000, "rank 1000 exceeds the width of the layers it adapts (encoder.h.0.attn."
                   "c_proj maps 32 -> 32): a rank above 32 only adds parameters; use a rank <= 32"),
    ("eva", 20, "rank 20 x rho 2 = 40 components per layer exceed the inputs of the layers it "
                "adapts (encoder.h.0.attn.c_attn takes 32); lower rank or rho so that round(rank "
                "x rho) <= 32"),
])  # fmt: skip
def test_a_rank_wider_than_the_layers_is_refused(method, rank, fragment, checkpoint, mw_root,
                                                 tmp_path, capsys):  # fmt: skip
    out = tmp_path / "run"
    args = ["finetune", *tiny_finetune_overrides(checkpoint, mw_root, out, method),
            f"method.rank={rank}"]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, fragment)
    assert not out.exists()
    collect = ["collect", "--checkpoint", str(checkpoint), "--dataset", HAMMER, "--data-root",
               str(mw_root), "--rank", "1000", "--out", str(tmp_path / "c")]  # fmt: skip
    assert main(collect) == 2
    one_line_error(capsys, "rank 1000 exceeds the width of the layers it adapts")
    assert not (tmp_path / "c").exists()


# --- class 3: agents ----------------------------------------------------------------------------


def copy_with_weights(checkpoint, tmp_path, change) -> object:
    """A copy of `checkpoint` whose weights went through `change(tensors)`."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    tensors = load_file(ckpt / "model.safetensors")
    change(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


def test_an_agent_with_nan_weights_is_refused_naming_the_checkpoint(checkpoint, tmp_path,
                                                                    capsys):  # fmt: skip
    ckpt = copy_with_weights(
        checkpoint, tmp_path, lambda t: t["predict_action.0.weight"].fill_(float("nan"))
    )
    assert main(evaluate_args(ckpt, tmp_path)) == 2
    one_line_error(
        capsys,
        f"checkpoint {ckpt} holds non-finite weights",
        "predict_action.0.weight: 128 of 128 values NaN or inf",
        "restore or retrain",
    )
    assert nothing_evaluated(tmp_path)


def test_an_agent_whose_actions_overflow_is_an_error_never_a_score(checkpoint, tmp_path,
                                                                   capsys):  # fmt: skip
    overflow = 3e38  # finite, but a state's embedding overflows to inf, then NaN
    ckpt = copy_with_weights(
        checkpoint, tmp_path, lambda t: t["embed_state.weight"].fill_(overflow)
    )
    assert main(evaluate_args(ckpt, tmp_path)) == 2
    one_line_error(capsys, f"the agent {ckpt} chose a non-finite action", "in push-v3",
                   "step 0", "restore or retrain it", progress="eval:")  # fmt: skip
    assert nothing_evaluated(tmp_path)


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("state_mean", [float("nan")] * 39, "config key 'state_mean[0]' must be a finite number"),
    ("return_scale", float("nan"), "config key 'return_scale' must be a finite number"),
    ("target_returns", {"push-v3": float("nan")}, "'target_returns.push-v3' must be a finite"),
])  # fmt: skip
def test_non_finite_stats_are_refused_naming_the_file(key, value, fragment, checkpoint,
                                                      tmp_path, capsys):  # fmt: skip
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    meta = json.loads((ckpt / "eva_rl.json").read_text())
    meta[key] = value
    (ckpt / "eva_rl.json").write_text(json.dumps(meta))  # JSON's NaN, as Python writes it
    assert main(evaluate_args(ckpt, tmp_path)) == 2
    one_line_error(capsys, f"{ckpt / 'eva_rl.json'}: ", fragment)
    assert nothing_evaluated(tmp_path)


def test_a_non_finite_target_return_is_refused(checkpoint, tmp_path, capsys):
    assert main(evaluate_args(checkpoint, tmp_path, "--target-return", "push-v3=nan")) == 2
    one_line_error(capsys, "the target return for env 'push-v3' is nan; give a finite one")
    assert nothing_evaluated(tmp_path)


def test_the_idle_marker_is_a_flag_no_action_value_can_be():
    from eva_rl.envs import EnvSlots

    slots = EnvSlots(0, ["reach-v3", "reach-v3"], 10, (39, 4))
    assert slots.action_space.shape == (2, 5)
    start, _ = slots.reset(options={"assign": {0: {0: (1, None), 1: (1, None)}}})
    actions = np.array([[1, 1, 1, 1, 1], [np.nan] * 4 + [0]], np.float32)
    obs, _, _, _, info = slots.step(actions)  # slot 0 acts, slot 1 is idle (NaN or not)
    assert not np.allclose(obs[0], start[0]) and np.array_equal(obs[1], start[1])
    assert info["reward"][1] == 0 and np.isnan(info["success"][1])
    slots.close()


# --- class 4: checkpoints that match ------------------------------------------------------------


@pytest.mark.parametrize(("change", "fragment"), [
    ({"n_layer": 3}, "encoder.h.2.ln_1.weight missing"),
    ({"n_layer": 1}, "encoder.h.1.attn.c_attn.weight unexpected"),
    ({"hidden_size": 64, "n_inner": 256}, "is (32,), config says (64,)"),
])  # fmt: skip
def test_a_config_json_that_disagrees_with_its_weights_is_refused(change, fragment, checkpoint,
                                                                  tmp_path, capsys):  # fmt: skip
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, **change}))
    assert main(evaluate_args(ckpt, tmp_path)) == 2
    err = one_line_error(capsys, f"checkpoint {ckpt} does not match its config.json", fragment,
                         "more); restore the config.json saved with these weights")  # fmt: skip
    assert err.count(";") <= 4  # the first three offending tensors, then a count
    assert nothing_evaluated(tmp_path)


def adapter_on(checkpoint, tmp_path, base_cfg) -> object:
    """A LoRA adapter of `checkpoint` as finetune exports it, re-pointed at a new base checkpoint
    built with `base_cfg` (the same stats)."""
    from eva_rl.adapters.export import export_adapted
    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method
    from eva_rl.agent import Agent, ModelConfig, build_model

    agent = Agent.load(checkpoint)
    adapted = build_method(agent.model, MethodConfig(name="lora", rank=2), BuildContext())
    adapter = tmp_path / "adapter"
    export_adapted(adapted, adapter, str(checkpoint), None)
    shutil.copy(checkpoint / "eva_rl.json", adapter / "eva_rl.json")
    base = tmp_path / "base"
    build_model(ModelConfig(**base_cfg, context_length=5), 39, 4).save_pretrained(base)
    shutil.copy(checkpoint / "eva_rl.json", base / "eva_rl.json")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


@pytest.mark.parametrize(("base_cfg", "fragments"), [
    ({"hidden_size": 32, "n_layer": 1, "n_head": 2},
     ["encoder.h.1.attn.c_attn is not a layer of the base", "the base has n_layer=1"]),
    ({"hidden_size": 16, "n_layer": 2, "n_head": 2},
     ["encoder.h.0.attn.c_attn has 32 inputs in the adapter, 16 in the base", "more)"]),
])  # fmt: skip
def test_an_adapter_that_does_not_fit_its_base_is_refused_before_loading(
    base_cfg, fragments, checkpoint, tmp_path, capsys
):
    adapter = adapter_on(checkpoint, tmp_path, base_cfg)
    capsys.readouterr()  # saving's progress bars
    assert main(evaluate_args(adapter, tmp_path)) == 2
    one_line_error(capsys, f"adapter {adapter} does not fit the base {tmp_path / 'base'}",
                   *fragments, "load it onto the checkpoint it was trained on")  # fmt: skip
    assert nothing_evaluated(tmp_path)


def test_a_matching_adapter_still_loads(checkpoint, tmp_path):
    from eva_rl.agent import load_agent

    adapter = adapter_on(checkpoint, tmp_path, {"hidden_size": 32, "n_layer": 2, "n_head": 2})
    agent = load_agent(adapter)
    assert agent.source == str(adapter) and agent.model.config.n_layer == 2


def moved_adapter(checkpoint, tmp_path, monkeypatch):
    """A trained-looking LoRA adapter (B random) whose config names its base at an absolute
    path that is not here, while a copy of the base sits at that path's tail under the working
    directory: a run folder made in another checkout. Returns (adapter, base copy)."""
    import torch

    from eva_rl.adapters.export import export_adapted
    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method
    from eva_rl.agent import Agent
    from eva_rl.weights import weights_digest

    project = tmp_path / "checkout"
    base = project / "results" / "pretrained" / "agent"
    shutil.copytree(checkpoint, base)
    agent = Agent.load(base)
    adapted = build_method(agent.model, MethodConfig(name="lora", rank=2), BuildContext())
    torch.manual_seed(0)
    for name, p in adapted.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    adapter = tmp_path / "run" / "agent"
    export_adapted(adapted, adapter, str(base), None)
    meta = json.loads((base / "eva_rl.json").read_text())
    meta["provenance"] = {"base_weights_sha256": weights_digest(base)}
    (adapter / "eva_rl.json").write_text(json.dumps(meta))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/elsewhere/results/pretrained/agent"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(project)
    return adapter, base


def test_an_adapter_finds_its_moved_base_by_content(checkpoint, tmp_path, monkeypatch, capsys):
    import torch

    from eva_rl.agent import Agent, load_agent, resolve_base

    adapter, base = moved_adapter(checkpoint, tmp_path, monkeypatch)
    assert resolve_base(adapter, "/elsewhere/results/pretrained/agent") == str(base.resolve())
    moved = load_agent(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps(config | {"base_model_name_or_path": str(base)}))  # fmt: skip
    named = load_agent(adapter)
    plain = Agent.load(base)
    for a, b in zip(moved.model.parameters(), named.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the same merged weights as with the base's true path
    assert any(not torch.equal(a, b) for a, b in
               zip(moved.model.parameters(), plain.model.parameters(), strict=True))  # fmt: skip


@pytest.mark.parametrize("change", ["weights", "stats"])
def test_a_different_checkpoint_at_the_moved_path_is_refused(
    change, checkpoint, tmp_path, monkeypatch, capsys
):
    from eva_rl.agent import Agent

    adapter, base = moved_adapter(checkpoint, tmp_path, monkeypatch)
    if change == "weights":  # retrained: same stats, other weights
        agent = Agent.load(base)
        next(agent.model.parameters()).data.add_(1.0)
        agent.model.save_pretrained(base)
    else:  # recorded without a digest, and a base with other stats at the path
        meta = json.loads((adapter / "eva_rl.json").read_text())
        (adapter / "eva_rl.json").write_text(json.dumps(meta | {"provenance": {}}))
        theirs = json.loads((base / "eva_rl.json").read_text())
        theirs["return_scale"] *= 2
        (base / "eva_rl.json").write_text(json.dumps(theirs))
    args = ["evaluate", "--checkpoint", str(adapter), "--episodes", "1", "--out", "e.json"]
    capsys.readouterr()  # saving's progress bars
    assert main(args) == 2
    one_line_error(capsys, f"adapter {adapter} was trained on /elsewhere/results/pretrained/agent",
                   "restore the base checkpoint at that path")  # fmt: skip
    assert not (tmp_path / "checkout" / "e.json").exists()


# --- class 6 (YAML part): aliases bounded -------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_in_one_line_quickly(tmp_path, capsys):
    names = "abcdefghi"
    lines = ["datasets:", f"  - &a [{', '.join(['lol'] * 9)}]"]
    lines += [
        f"  - &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:], strict=False)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 9**9 = 387M strings once expanded
    assert bomb.stat().st_size < 500
    out = tmp_path / "run"
    started = time.perf_counter()
    assert main(["finetune", "--config", str(bomb), "--out", str(out)]) == 2
    assert time.perf_counter() - started < 5
    one_line_error(capsys, f"{bomb} expands to more than 1,000,000 YAML nodes",
                   "write the values out")  # fmt: skip
    bomb.write_text("datasets: &a [x, *a]\n")
    assert main(["finetune", "--config", str(bomb), "--out", str(out)]) == 2
    one_line_error(capsys, "the anchor on line 1 holds an alias of itself")
    assert main(["finetune", "--out", str(out), "datasets=" + "[" * 5000 + "]" * 5000]) == 2
    err = one_line_error(capsys, "the value of override datasets= nests too deeply")
    assert len(err) < 200
    assert not out.exists()


def test_a_base_retrained_at_the_adapters_own_path_is_refused(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """The adapter names its base's true path and a retrained base sits there: merging onto it
    would give an agent nobody trained."""
    from eva_rl.agent import Agent

    adapter, base = moved_adapter(checkpoint, tmp_path, monkeypatch)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps(config | {"base_model_name_or_path": str(base)}))  # fmt: skip
    agent = Agent.load(base)
    next(agent.model.parameters()).data.add_(1.0)
    agent.model.save_pretrained(base)
    args = ["evaluate", "--checkpoint", str(adapter), "--episodes", "1", "--out", "e.json"]
    capsys.readouterr()
    assert main(args) == 2
    one_line_error(capsys, f"adapter {adapter} was trained on other weights than those now at "
                   f"{base}", "restore that checkpoint")  # fmt: skip
    assert not (tmp_path / "checkout" / "e.json").exists()


# --- an audit's bad inputs: one line each, never a traceback ------------------------------------


@pytest.mark.parametrize("command", ["finetune", "sweep", "sweep base", "report"])
def test_a_config_file_that_is_not_utf8_is_refused(command, tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe bad")  # UTF-16's byte order mark: not UTF-8
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {binary}\nout: {tmp_path / 'out'}\ngrid: {{seed: [0]}}\n")
    (tmp_path / "runs").mkdir()
    args = {"finetune": ["finetune", "--config", str(binary), "--out", str(tmp_path / "out")],
            "sweep": ["sweep", str(binary)],
            "sweep base": ["sweep", str(sweep)],
            "report": ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                       "--hypotheses", str(binary)]}[command]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, f"{binary} is not valid YAML/UTF-8 text", "save it as UTF-8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", [
    lambda s: s.pop("transitions"),
    lambda s: s.update(return_mean="n/a"),
    lambda s: s.update(success_final=None),  # printed beside success_any
    lambda s: s.update(episodes="4"),
])  # fmt: skip
def test_a_damaged_dataset_summary_is_recomputed_from_the_data(damage, mw_root, tmp_path, capsys):
    from eva_rl.data.catalog import SUMMARY_FILE

    assert main(["data", "list", "--root", str(mw_root)]) == 0
    whole = capsys.readouterr().out.replace(str(mw_root), "ROOT")
    root = tmp_path / "mw"
    shutil.copytree(mw_root, root)
    path = root / HAMMER / SUMMARY_FILE
    summary = json.loads(path.read_text())
    damage(summary)
    path.write_text(json.dumps(summary))
    assert main(["data", "list", "--root", str(root)]) == 0
    assert capsys.readouterr().out.replace(str(root), "ROOT") == whole
    args = ["data", "build", "--tasks", "hammer-v3", "--root", str(root), "--skip-existing"]
    assert main(args) == 0
    hammer = next(line.strip() for line in whole.splitlines() if HAMMER in line)
    assert f"  {hammer}\n" in capsys.readouterr().out


@pytest.mark.parametrize(("method", "targets", "fragment"), [
    ("lora", "[nope]", "no Linear/Conv1D module matches target_modules=['nope']"),
    ("pissa", "[nope]", "no Linear/Conv1D module matches target_modules=['nope']"),
    ("lora", "[]", "method.target_modules is empty; name the layers to adapt"),
])  # fmt: skip
def test_target_modules_matching_no_layer_are_refused_for_every_method(
    method, targets, fragment, checkpoint, mw_root, tmp_path, capsys
):
    out = tmp_path / "run"
    args = tiny_finetune_overrides(
        checkpoint, mw_root, out, method, f"method.target_modules={targets}"
    )
    assert main(["finetune", *args]) == 2
    one_line_error(capsys, fragment)  # as EVA's collector words it
    assert not out.exists()


@pytest.mark.parametrize(("out", "tb"), [("x", "x"), ("x/e.json", "x"), ("x", "x/tb")])
def test_an_evaluation_whose_tb_folder_overlaps_its_report_is_refused_before_rollouts(
    out, tb, checkpoint, tmp_path, capsys
):
    args = ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "1",
            "--out", str(tmp_path / out), "--tb", str(tmp_path / tb)]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, "are the same path or one holds the other",
                   "give --tb a folder beside the report")  # fmt: skip
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("override", "fragment"), [
    ("model.context_length=100000", "model.context_length must be in [1, 1024], got 100000"),
    ("model.max_ep_len=10000000", "model.max_ep_len must be in [1, 100000], got 10000000"),
    ("model.hidden_size=100000", "model.hidden_size must be in [1, 8192], got 100000"),
    ("model.n_head=0", "model.n_head must be in [1, 128], got 0"),  # was a ZeroDivisionError
])  # fmt: skip
def test_model_sizes_are_bounded(override, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_pretrain_overrides("root", out), override]) == 2
    one_line_error(capsys, fragment, "cannot be allocated")
    assert not out.exists()


def test_collector_limits_name_the_setting_and_value_given(tmp_path, capsys):
    out = tmp_path / "eva"
    base = ["collect", "--checkpoint", "ckpt", "--datasets", HAMMER, "--out", str(out)]
    assert main([*base, "--max-batches", "0"]) == 2
    one_line_error(capsys, "max_batches must be >= 2 (convergence compares batches), got 0")
    assert main([*base, "--batch-size", "0"]) == 2
    one_line_error(capsys, "batch_size must be in [1, 65536], got 0")
    assert not out.exists()


def test_an_export_into_a_users_folder_does_not_suggest_overwrite(tmp_path, capsys):
    from eva_rl import ownership

    runs = tmp_path / "sweep"
    (runs / "r1").mkdir(parents=True)
    ownership.claim(runs, "sweep")
    (runs / "r1" / "summary.json").write_text("{}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["export", str(runs), "--out", str(mine)]) == 2
    err = one_line_error(capsys, f"{mine} exists and was not made by eva-rl")
    assert "--overwrite" not in err  # it would be refused too
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_curve_is_written_in_the_format_its_extension_names(checkpoint, tmp_path, capsys):
    run = checkpoint.parent
    assert main(["curve", str(run), "--out", str(tmp_path / "c.pdf")]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    for name in ("c", "c.xyz"):
        assert main(["curve", str(run), "--out", str(tmp_path / name)]) == 2
        one_line_error(capsys, f"cannot write a figure as {tmp_path / name}", ".pdf", ".png")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pdf"]


def test_a_target_return_for_an_env_not_evaluated_is_refused(checkpoint, tmp_path, capsys):
    args = evaluate_args(checkpoint, tmp_path, "--envs", "push-v3", "--target-return",
                         "hammer-v3=100")  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, "a target return is given for hammer-v3, which this evaluation does "
                   "not play (envs: push-v3)")  # fmt: skip
    assert nothing_evaluated(tmp_path)


@pytest.mark.parametrize(("suite", "fragment"), [
    ("nope", "unknown suite 'nope'; valid: "),
    ("cw10", "suite cw10 and datasets metaworld/push-v3/scripted-v0 name different data"),
])  # fmt: skip
def test_pretraining_refuses_a_suite_it_would_ignore(suite, fragment, mw_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_pretrain_overrides(mw_root, out), "--suite", suite]) == 2
    one_line_error(capsys, fragment)
    assert not out.exists()
