"""Bad input is refused in one line naming the key, before any work: seeds, EVA's collector
method, a stats file's lengths, env ids, config paths from outside the checkout, stats paths."""

import argparse
import dataclasses
import importlib
import json
import pkgutil
import re

import pytest
import yaml

import eva_rl
from eva_rl import assets
from eva_rl.agent import Agent, AgentMeta, read_meta
from eva_rl.assets import SHIPPED
from eva_rl.cli import main
from eva_rl.config import from_args, from_dict, load_config
from eva_rl.data.build import DataBuildConfig
from eva_rl.data.record import RecordConfig
from eva_rl.envs import DatasetRecipe, make_env
from eva_rl.errors import UserError
from eva_rl.eva.collector import CollectorConfig
from eva_rl.evaluation import EvalConfig
from eva_rl.online.config import OnlineConfig
from eva_rl.quickstart import QuickstartConfig
from eva_rl.training.finetune import (
    AdaptedRunConfig,
    FinetuneCollectorConfig,
    FinetuneConfig,
    FinetuneEvalConfig,
    SplitConfig,
)
from eva_rl.training.pretrain import PretrainConfig, PretrainEvalConfig

RUN = {"task": "hammer-v3", "out": "runs/x"}  # what a finetune or online config must name
RECORD = {"env": "Pendulum-v1", "id": "test/pendulum-v0"}

# every config with a seed: (class, what else it needs, the key its seed is set by)
SEEDED = [
    (EvalConfig, {}, "eval.seed"),
    (PretrainEvalConfig, {}, "eval.seed"),
    (PretrainConfig, {}, "seed"),
    (FinetuneEvalConfig, {}, "eval.seed"),
    (SplitConfig, {}, "split.seed"),
    (AdaptedRunConfig, RUN, "seed"),
    (FinetuneConfig, RUN, "seed"),
    (OnlineConfig, RUN, "seed"),
    (CollectorConfig, {}, "collector.seed"),
    (QuickstartConfig, {}, "seed"),
    (DatasetRecipe, {}, "dataset.seed"),
    (RecordConfig, RECORD, "seed"),
    (DataBuildConfig, {}, "seed"),
]
RECORDS = {"Episode", "RunSummary", "Row", "Plan"}  # results that carry a seed, not configs


def seeded_dataclasses() -> set[type]:
    """Every dataclass of eva_rl with a field named `seed` or `*_seed`, results excepted."""
    found = set()
    for info in pkgutil.walk_packages(eva_rl.__path__, "eva_rl."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
                continue
            if obj.__module__ == info.name and obj.__name__ not in RECORDS:
                if any(f.name.endswith("seed") for f in dataclasses.fields(obj)):
                    found.add(obj)
    return found


def test_every_config_with_a_seed_refuses_a_negative_one():
    """Found by looking, so a config that gains a seed is listed in SEEDED (and checked)."""
    listed = {cls: (needs, key) for cls, needs, key in SEEDED}
    for cls in seeded_dataclasses():
        assert cls in listed, f"{cls.__name__} has a seed: add it to SEEDED"
        needs, key = listed[cls]
        with pytest.raises(UserError, match=rf"^{re.escape(key)} must be"):
            cls(**needs, seed=-1)


@pytest.mark.parametrize(("cls", "needs", "key"), SEEDED, ids=[c.__name__ for c, _, _ in SEEDED])
def test_a_negative_or_too_large_seed_is_refused_naming_its_key(cls, needs, key):
    for bad in (-1, 2**63):
        with pytest.raises(UserError, match=rf"^{re.escape(key)} must be an integer in \[0, 2"):
            cls(**needs, seed=bad)
    for good in (0, 2**63 - 1):
        assert cls(**needs, seed=good).seed == good


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "--task", "hammer-v3", "--method", "lora", "--out", "{tmp}/a", "seed=-1"],
        ["online", "--task", "hammer-v3", "--method", "lora", "--out", "{tmp}/a", "--seed", "-2"],
        ["evaluate", "--envs", "button-press-v3", "--seed", "-1", "--out", "{tmp}/a.json"],
        [
            "collect",
            "--datasets",
            "metaworld/hammer-v3/scripted-v0",
            "--out",
            "{tmp}/a",
            "--seed",
            "-1",
        ],
        ["data", "build", "--tasks", "hammer-v3", "--seed", "-1", "--root", "{tmp}/a"],
        ["pretrain", "--out", "{tmp}/a", "eval.seed=-1"],
    ],  # fmt: skip
    ids=lambda argv: argv[0] if argv[0] != "data" else "data-build",
)
def test_the_commands_refuse_a_negative_seed_in_one_line_and_write_nothing(argv, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"eva-rl: error: \S*seed must be an integer in \[0, 2\*\*63\), got -\d; "
                        r"give a seed >= 0", err), err  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.json").exists()


def test_an_unknown_collector_method_is_refused_however_the_config_is_built():
    with pytest.raises(UserError, match="'collector.method' must be one of .*got 'bogus'"):
        from_dict(FinetuneConfig, {**RUN, "collector": {"method": "bogus"}})
    bogus = FinetuneCollectorConfig(method="bogus")
    with pytest.raises(UserError, match=r"collector.method must be one of \['covariance', 'incre"):
        FinetuneConfig(**RUN, collector=bogus)
    with pytest.raises(UserError, match="collector.method must be one of"):
        CollectorConfig(method="bogus")
    cfg = from_dict(FinetuneConfig, {**RUN, "collector": {"method": "incremental-svd"}})
    assert cfg.collector_config().method == "incremental-svd"


@pytest.mark.parametrize("key", ["context_length", "horizon"])
def test_stats_with_no_context_or_no_horizon_are_refused_naming_the_file(key, tmp_path):
    stats = {"state_mean": [0.0], "state_std": [1.0], "return_scale": 1.0,
             "context_length": 5, "horizon": 10}  # fmt: skip
    for bad in (0, -3):
        with pytest.raises(UserError, match=rf"^{key} must be >= 1, got {bad}"):
            AgentMeta(**{**stats, key: bad})
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({**stats, key: 0}))
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: {key} must be >= 1, got 0"):
        read_meta(path)
    assert AgentMeta(**{**stats, key: 1}).horizon >= 1


@pytest.mark.parametrize("name", ["nomod:Foo-v0", "nomod.sub:Foo-v0"])
def test_a_gym_id_with_a_missing_module_is_refused_in_one_line(name):
    with pytest.raises(UserError, match=rf"^cannot make env '{name}': .*No module named 'nomod'"):
        make_env(name, 10)


def test_config_paths_under_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    """`--config configs/...` (and a sweep file's `base:`) name the configs that travel with
    eva_rl when the current directory has no such file; one that is there comes first."""
    monkeypatch.chdir(tmp_path)
    name = "configs/finetune/cw10-cpu.yaml"
    shipped = load_config(FinetuneConfig, name, ["task=hammer-v3", "out=o"])
    args = argparse.Namespace(config=name, overrides=["out=o"], task="hammer-v3")
    assert from_args(FinetuneConfig, args, ["task"]) == shipped
    assert shipped.method.rank == yaml.safe_load((assets.root() / name).read_text())[
        "method"]["rank"]  # fmt: skip
    mine = tmp_path / name
    mine.parent.mkdir(parents=True)
    mine.write_text("method: {rank: 3}\n")
    assert from_args(FinetuneConfig, args, ["task"]).method.rank == 3
    with pytest.raises(UserError, match="config file not found: configs/nope.yaml"):
        load_config(FinetuneConfig, "configs/nope.yaml")


def test_a_sweep_base_under_configs_resolves_from_any_directory(mw_root, tmp_path, monkeypatch):
    from eva_rl.sweeps import load_sweep, plan, sweep

    monkeypatch.chdir(tmp_path)
    spec = {"base": "configs/finetune/cw10-cpu.yaml", "out": "runs", "grid": {"seed": [0]},
            "set": {"task": "hammer-v3", "data_root": str(mw_root)}}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    (run,) = [r for r in plan(load_sweep("sweep.yaml")) if not r.baseline]
    shipped = yaml.safe_load((assets.root() / spec["base"]).read_text())
    assert run.config["loop"] == shipped["loop"] and run.config["out"] == "runs/seed=0"
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**spec, "grid": {"optim.lrr": [1]}}))
    with pytest.raises(UserError, match="did you mean lr"):  # the base was read: the runs fail
        sweep(load_sweep("sweep.yaml"), progress=False)


def test_a_missing_stats_file_or_checkpoint_path_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^stats file .*nope\.json not found; check the --stats"):
        Agent.load(SHIPPED, stats=tmp_path / "nope.json")
    with pytest.raises(UserError, match=r"^runs/agent is not a local directory \(no such path\), "
                       "and no stats are known for it as a Hugging Face hub id"):  # fmt: skip
        Agent.load("runs/agent")


# every eval setting of a finetune or online run, with a value it refuses
BAD_EVAL = [("episodes", 0), ("final_episodes", -1), ("max_envs", -1), ("workers", -1),
            ("video", -1), ("video_size", 1), ("video_size", 65), ("video_every", 0)]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), BAD_EVAL, ids=[f"{k}={v}" for k, v in BAD_EVAL])
def test_a_runs_eval_settings_are_refused_naming_their_key(key, value):
    """All of them, in the config: not when the evaluator is built, after the run folder is
    claimed and EVA has collected."""
    with pytest.raises(UserError, match=rf"^eval\.{key} (\(--video-size\) )?must be"):
        FinetuneEvalConfig(**{key: value})
    for cls in (FinetuneConfig, OnlineConfig):
        with pytest.raises(UserError, match=rf"^eval\.{key} "):
            from_dict(cls, {**RUN, "eval": {key: value}})


@pytest.mark.parametrize("command", ["finetune", "online"])
def test_a_bad_eval_setting_stops_the_command_before_the_run(
    command, tmp_path, capsys, monkeypatch
):
    module = {"finetune": "eva_rl.training.finetune", "online": "eva_rl.online.run"}[command]
    monkeypatch.setattr(f"{module}.{command}", lambda *a, **k: pytest.fail("the run started"))
    for bad in ("eval.max_envs=-1", "eval.video_size=1"):
        out = tmp_path / "a"
        assert main([command, "--task", "hammer-v3", "--out", str(out), bad]) == 2
        assert re.fullmatch(rf"eva-rl: error: {re.escape(bad.split('=')[0])} .*must be .*",
                            capsys.readouterr().err.strip())  # fmt: skip
        assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"set": {"loop.stepz": 3}}, r"^set \(finetune keys\) .*unknown config key 'loop.stepz'"),
        ({"set": {"optim": {"lr": -1.0}}}, r"^set \(finetune keys\) .*optim.lr"),
        ({"methods": []}, r"^methods is empty; name the methods to compare, e.g. methods="),
        ({"methods": ["eva", "eva"]}, r"^methods names eva twice"),
    ],
    ids=["unknown-set-key", "bad-set-value", "no-methods", "a-method-twice"],
)
def test_the_quickstart_refuses_its_runs_settings_before_building_data(
    settings, says, tmp_path, capsys, monkeypatch
):
    """`set` and `methods` are checked against the runs' finetune config before the dataset is
    built, in the quickstart's own keys (not a sweep's grid it never wrote)."""
    with pytest.raises(UserError, match=says):
        QuickstartConfig(**settings)
    monkeypatch.setattr("eva_rl.data.build.build", lambda *a, **k: pytest.fail("data built"))
    args = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
            for key, value in settings.items()]  # fmt: skip
    assert main(["quickstart", "--task", "hammer-v3", "--out", str(tmp_path / "q"), *args]) == 2
    assert re.match(says, capsys.readouterr().err.strip().removeprefix("eva-rl: error: "))
    assert not (tmp_path / "q").exists()


def test_valid_quickstart_settings_plan_the_runs_they_name(tmp_path):
    cfg = QuickstartConfig(task="hammer-v3", out=str(tmp_path), set={"optim": {"lr": 1e-3}})
    sweep = cfg.sweep_config()
    assert sweep.grid == {"method.name": ["eva", "lora"]} and sweep.out == str(tmp_path / "runs")
    assert sweep.set["optim"] == {"lr": 1e-3} and sweep.set["task"] == "hammer-v3"
    assert not list(tmp_path.iterdir())  # planned, nothing written


@pytest.mark.parametrize("cls", [FinetuneConfig, OnlineConfig])
def test_a_task_and_other_datasets_are_refused_as_naming_different_data(cls):
    """The run trained on the datasets and was labelled with the task (reports filed it there)."""
    base = ["out=x", "task=push-v3"]
    refusal = (r"task push-v3 and datasets metaworld/hammer-v3/scripted-v0 name different data "
               r".* --task T is short for --datasets metaworld/push-v3/scripted-v0$")  # fmt: skip
    with pytest.raises(UserError, match=refusal):
        load_config(cls, None, [*base, "datasets=[metaworld/hammer-v3/scripted-v0]"])
    same = load_config(cls, None, [*base, "datasets=[metaworld/push-v3/scripted-v0]"])
    assert same.dataset_ids == ["metaworld/push-v3/scripted-v0"]  # the same data twice: fine
