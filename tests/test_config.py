import argparse
from dataclasses import dataclass, field

import pytest

from eva_rl.config import apply_override, from_dict, load_config, save_config
from eva_rl.data.build import DataBuildConfig
from eva_rl.envs import load_suite
from eva_rl.errors import UserError


@dataclass
class Inner:
    lr: float = 1e-4
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    tag: str | None = None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.layers=[3, 4]", "steps=7", "tag=abc"])
    assert cfg == Outer(name="x", steps=7, inner=Inner(lr=0.5, layers=[3, 4]), tag="abc")


@dataclass
class Tuned:
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5))


def test_a_nested_override_keeps_the_defaults_the_parent_gives():
    assert load_config(Tuned, None, ["inner.layers=[7]"]).inner == Inner(lr=0.5, layers=[7])


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert from_dict(Outer, {"inner": {"lr": 1}}).inner.lr == 1.0
    assert load_config(Outer, None, ["inner.lr=3e-3"]).inner.lr == 0.003  # YAML 1.1 string
    with pytest.raises(UserError, match="'inner.lr' must be a number, got 'fast'"):
        load_config(Outer, None, ["inner.lr=fast"])
    with pytest.raises(UserError, match="'steps' must be an integer"):
        from_dict(Outer, {"steps": 1.5})
    with pytest.raises(UserError, match=r"got '0,1' \(several values are a list: \[0, 1\]\)"):
        load_config(Outer, None, ["steps=0,1"])  # a shell line's comma list: one string


def test_unknown_key_names_the_nearest_valid_ones():
    with pytest.raises(UserError, match=r"unknown config key 'stpes' \(did you mean steps\?\)"):
        load_config(Outer, None, ["stpes=3"])
    with pytest.raises(UserError, match=r"unknown config key 'inner.lrr' \(did you mean lr\?\)"):
        load_config(Outer, None, ["inner.lrr=3"])
    with pytest.raises(UserError, match="valid keys: name, steps, inner, tag"):
        load_config(Outer, None, ["zzzz=3"])


def test_a_precision_typo_is_refused_when_the_config_loads():
    """Every config with a precision (finetune, pretrain, evaluation, collector) checks it while
    loading, before a run folder exists."""
    from eva_rl.eva.collector import CollectorConfig
    from eva_rl.evaluation import EvalConfig
    from eva_rl.training.finetune import FinetuneConfig
    from eva_rl.training.pretrain import PretrainConfig

    required = {FinetuneConfig: ["task=hammer-v3", "out=runs/x"]}  # the others have defaults
    for cls in (FinetuneConfig, PretrainConfig, EvalConfig, CollectorConfig):
        rest = required.get(cls, [])
        with pytest.raises(
            UserError, match=r"'precision' must be one of \['auto', 'bf16', 'fp32'\]"
        ):
            load_config(cls, None, [*rest, "precision=bf61"])
        assert load_config(cls, None, [*rest, "precision=fp32"]).precision == "fp32"


def test_override_syntax_errors():
    with pytest.raises(UserError, match="must look like key=value"):
        apply_override({}, "steps")
    with pytest.raises(UserError, match="'steps' is not a nested section"):
        apply_override({"steps": 3}, "steps.x=1")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(DataBuildConfig, None, ["tasks=[push-v3]", "episodes=3"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(DataBuildConfig, tmp_path / "resolved.yaml") == cfg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Outer, bad)


def test_suites_load_and_validate(tmp_path):
    cw10 = load_suite("cw10")
    assert cw10 == load_suite("metaworld/cw10")
    assert cw10.name == "metaworld/cw10" and len(cw10.tasks) == 10 and cw10.horizon == 200
    mt40, mt50 = load_suite("mt40"), load_suite("mt50")
    assert sorted(mt40.tasks + cw10.tasks) == sorted(mt50.tasks) and len(mt50.tasks) == 50
    custom = tmp_path / "mine.yaml"
    custom.write_text("tasks: [reach-v3]\ndataset: {noise: {levels: [0.0], weights: [1]}}\n")
    mine = load_suite(str(custom))
    assert (mine.name, mine.tasks, mine.dataset.noise.levels) == ("mine", ["reach-v3"], [0.0])
    custom.write_text("tasks: [reach-v9]\n")
    with pytest.raises(UserError, match="unknown task in suite mine 'reach-v9'; valid: .*reach-v3"):
        load_suite(str(custom))
    with pytest.raises(UserError, match="unknown suite 'cw11'; valid: gym.*, metaworld/cw10"):
        load_suite("cw11")
    custom.write_text("tasks: [reach-v3]\ndataset: {seed: -1}\n")
    with pytest.raises(UserError, match=f"^suite file {custom}: .*dataset.seed"):
        load_suite(str(custom))


def test_shipped_data_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("configs/data/*.yaml")):
        cfg = load_config(DataBuildConfig, path)
        load_suite(cfg.suite)


def test_every_shipped_run_and_sweep_config_validates():
    """The configs a user is pointed to load into their dataclasses, and every run a shipped
    sweep plans is a valid config of its command (its data need not exist here)."""
    import copy
    from pathlib import Path

    from eva_rl.config import flatten, read_yaml, set_path
    from eva_rl.sweeps import load_sweep
    from eva_rl.sweeps.plan import fill
    from eva_rl.sweeps.stages import config_class
    from eva_rl.training.pretrain import PretrainConfig

    configs = Path(__file__).parents[1] / "configs"
    kinds = {"finetune": config_class("finetune"), "online": config_class("online"),
             "pretrain": PretrainConfig}  # fmt: skip
    for folder, cls in kinds.items():
        paths = sorted((configs / folder).glob("*.yaml"))
        assert paths, folder
        for path in paths:  # a config that leaves the data to the command line gets a task
            named = {"datasets", "task", "suite"} & set(read_yaml(path))
            load_config(cls, path, ["out=x", *([] if named else ["task=reach-v3"])])
    sweeps = sorted((configs / "sweeps").glob("*.yaml"))
    for path in sweeps:
        sweep = load_sweep(path)
        base = read_yaml(Path(__file__).parents[1] / sweep.base)
        for point in sweep.points:
            data = copy.deepcopy(base)
            filled = {k: fill(v, point, k) for k, v in flatten(sweep.set).items()}
            for key, value in {**filled, **point, "out": "x"}.items():
                set_path(data, key, value)
            assert "{" not in str(data.get("from_run")), path
            from_dict(config_class(sweep.command), data)
    assert len(sweeps) >= 10


CONFIG_COMMANDS = {  # every command whose options come from a config dataclass
    "data build": "eva_rl.data.build:DataBuildConfig",
    "data record": "eva_rl.data.record:RecordConfig",
    "pretrain": "eva_rl.training.pretrain:PretrainConfig",
    "evaluate": "eva_rl.evaluation:EvaluateConfig",
    "collect": "eva_rl.eva.state:CollectConfig",
    "finetune": "eva_rl.training.finetune:FinetuneConfig",
    "online": "eva_rl.online.config:OnlineConfig",
    "quickstart": "eva_rl.quickstart:QuickstartConfig",
    "video": "eva_rl.compare:CompareConfig",
    "sweep": "eva_rl.sweeps.config:SweepConfig",  # the sweep file's keys
}


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_help_documents_every_setting_of_the_command(command, capsys):
    """Each setting is a documented flag or a documented line of --help's end (key=default
    and the field's comment): a user finds every knob (e.g. online's td3.warmup) there, and
    every number's default, 0 included."""
    import importlib

    from eva_rl.cli import COMMANDS, main
    from eva_rl.flags import added_flags, describe, leaf_keys

    module, name = CONFIG_COMMANDS[command].split(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    flagged = {a.dest for a in added_flags(COMMANDS[command][1], argparse.ArgumentParser())}
    for key in leaf_keys(cls):
        _, default, doc = describe(cls, key)
        assert doc, f"{name}.{key} has no comment to show in --help"
        assert key in flagged or f"\n  {key}=" in text, f"{command} --help lacks {key}"
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            shown = f"(default: {default})" in " ".join(text.split())  # as argparse wraps it
            assert shown if key in flagged else f"\n  {key}={default}\n" in text, key
