"""The evaluate and collect commands end to end on a tiny checkpoint and real datasets."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_minari
from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model
from eva_rl.cli import COMMANDS, main


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    meta = AgentMeta(
        state_mean=[0.0] * 39,
        state_std=[1.0] * 39,
        return_scale=1000.0,
        context_length=5,
        horizon=20,
        target_returns={"push-v3": 1500.0},
    )
    model = build_model(ModelConfig(hidden_size=32, n_layer=1, n_head=2, context_length=5), 39, 4)
    Agent(model.eval(), meta).save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_evaluate_writes_report_and_refuses_to_overwrite(ckpt, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--tasks",
        "push-v3",
        "--episodes",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert len(report["envs"]["push-v3"]["episodes"]) == 2
    assert report["config"]["checkpoint"] == str(ckpt) and report["config"]["seed"] == 1000
    assert "| push-v3 |" in capsys.readouterr().out
    assert any((tmp_path / "eval_tb").iterdir())
    stopped = tmp_path / "stopped.json"  # interrupted while writing: nothing of it is left
    with pytest.MonkeyPatch.context() as m:
        m.setattr("eva_rl.results.EvalResult.log", lambda *a, **k: (_ for _ in ()).throw(
            KeyboardInterrupt))  # fmt: skip
        assert main([*args[:-3], str(stopped), "--device", "cpu"]) == 130
    assert not stopped.exists() and not list(tmp_path.glob("*stopped*"))
    before = out.read_bytes()
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([*args[:4], "reach-v3", *args[5:], "--overwrite"]) == 2
    assert "no target return for env 'reach-v3'" in capsys.readouterr().err
    assert (
        main([*args[:4], "reach-v3", *args[5:], "--overwrite", "--target-return", "reach-v3=abc"])
        == 2
    )
    assert "must look like ENV=NUMBER" in capsys.readouterr().err


def test_collect_writes_eva_files(ckpt, mw_root, tmp_path, capsys):
    out = tmp_path / "eva"
    args = [
        "collect",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "metaworld/push-v3/scripted-v0",
        "--data-root",
        str(mw_root),
        "--rank",
        "2",
        "--max-batches",
        "30",
        "--batch-size",
        "16",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    state = load_file(str(out / "eva_state.safetensors"))
    meta = json.loads((out / "eva.json").read_text())
    assert set(state) == set(meta["layers"]) and len(state) == 4  # 1 block x 4 matrices
    assert sum(v.shape[0] for v in state.values()) == meta["budget"] == 8
    for name, layer in meta["layers"].items():
        assert state[name].shape[0] == layer["rank"] and layer["tokens"] > 0
    assert meta["datasets"] == ["metaworld/push-v3/scripted-v0"]
    assert (out / "collect_config.yaml").is_file() and any((out / "tb").iterdir())
    assert main(args) == 2 and "already holds an EVA result" in capsys.readouterr().err


def test_collect_refuses_a_dataset_of_other_dimensions(ckpt, tmp_path, capsys):
    root = tmp_path / "minari"
    eps = [(np.zeros((4, 3)), np.zeros((3, 1)), [0.0, 1.0, 2.0])]
    write_minari("test/pendulum/tiny-v0", gym.make("Pendulum-v1"), eps, root)
    code = main(
        [
            "collect",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            "test/pendulum/tiny-v0",
            "--data-root",
            str(root),
            "--out",
            str(tmp_path / "eva"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "state_dim=39, act_dim=4 but dataset test/pendulum/tiny-v0 has state_dim=3, act_dim=1"
        in err
    )
    assert not (tmp_path / "eva").exists()


def test_evaluate_targets_from_datasets(ckpt, mw_root, tmp_path, monkeypatch):
    """Zero-shot on a task the checkpoint has no target for: the dataset's best return."""
    from eva_rl.data import catalog

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(mw_root))
    out = tmp_path / "zs.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--tasks",
                "hammer-v3",
                "--episodes",
                "1",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--targets-from-datasets",
            ]
        )
        == 0
    )
    best = catalog.read_summary("metaworld/hammer-v3/scripted-v0")["return_max"]
    target = json.loads(out.read_text())["envs"]["hammer-v3"]["target_return"]
    assert target == pytest.approx(best, rel=1e-6)  # float32 returns-to-go of the data


def test_stratified_bootstrap_ci_contains_the_mean_and_narrows():
    from eva_rl.stats import stratified_bootstrap_ci

    rng = np.random.default_rng(0)
    groups = [rng.random(10) < p for p in (0.2, 0.5, 0.9)]
    mean = np.mean([g.mean() for g in groups])
    low, high = stratified_bootstrap_ci(groups)
    assert low < mean < high and high - low < 0.4
    big = [rng.random(1000) < p for p in (0.2, 0.5, 0.9)]
    low2, high2 = stratified_bootstrap_ci(big)
    assert high2 - low2 < (high - low) / 4
    assert stratified_bootstrap_ci([[1.0, 1.0], [0.0, 0.0]]) == (0.5, 0.5)  # no spread


def test_a_key_value_after_a_one_value_option_is_its_value_not_an_override():
    from eva_rl.cli import parse

    args = parse(["report", "runs", "--out", "r", "--reference", "lora", "precision=fp32"])
    assert args.reference == ["lora", "precision=fp32"] and args.overrides == []
    args = parse(["finetune", "--out", "runs/seed=0", "loop.steps=5"])
    assert args.out == "runs/seed=0" and args.overrides == ["loop.steps=5"]
    args = parse(["finetune", "--task", "hammer-v3", "loop.steps=5"])  # after the value
    assert args.task == "hammer-v3" and args.overrides == ["loop.steps=5"]
    args = parse(["evaluate", "--tasks", "reach-v3", "episodes=5", "--checkpoint", "c"])
    assert args.envs == ["reach-v3"] and args.overrides == ["episodes=5"]  # several values


def test_a_run_folder_named_like_an_override_is_a_path(tmp_path, monkeypatch):
    """A sweep's run folders are named `seed=0,task=...,method=eva`: given where it exists,
    such an argument is the path it names, not a setting."""
    from eva_rl.cli import parse

    monkeypatch.chdir(tmp_path)
    agent = "seed=0,task=hammer-v3,method=eva/agent"
    with pytest.raises(SystemExit):  # no such folder: a setting, and no checkpoint given
        parse(["video", agent, "--env", "hammer-v3", "--out", "v", "episodes=2"])
    (tmp_path / agent).mkdir(parents=True)
    args = parse(["video", agent, "--env", "hammer-v3", "--out", "v", "episodes=2"])
    assert args.checkpoints == [agent] and args.overrides == ["episodes=2"]


def test_a_setting_is_a_setting_where_a_folder_has_its_name(tmp_path, monkeypatch):
    """Only a command whose positional arguments are paths (video, sweep) reads an existing
    `key=value` as a path: finetune has none, so `threads=-1` stays a setting beside a folder
    of that name (a sweep's run folders are named so)."""
    from eva_rl.cli import parse

    monkeypatch.chdir(tmp_path)
    (tmp_path / "threads=-1").mkdir()
    args = parse(["finetune", "--task", "hammer-v3", "--out", "o", "threads=-1"])
    assert args.overrides == ["threads=-1"] and args.out == "o"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["data", "record", "--env", "Pendulum-v1", "--id", "bad_id"],
         "dataset id 'bad_id' is not a Minari id: write NAMESPACE/NAME-vN"),
        (["finetune", "--config", "{tmp}", "--task", "hammer-v3", "--out", "{tmp}/a"],
         "config file {tmp} is a folder; name a YAML file"),
        (["data", "list", "--root", "{tmp}/none"], "the datasets root {tmp}/none is not there"),
        (["data", "list", "--root", "{tmp}/file"], "the datasets root {tmp}/file is a file"),
        (["export", "{tmp}/runs", "--out", "{tmp}/file"], "output {tmp}/file is a file"),
        (["export", "{tmp}/runs", "--out", "{tmp}/file", "--overwrite"],
         "output {tmp}/file is a file"),
    ],
    ids=["record-id", "config-folder", "list-no-root", "list-file-root", "export-file",
         "export-file-overwrite"],
)  # fmt: skip
def test_bad_input_is_named_as_what_it_is(argv, says, tmp_path, capsys):
    """One line that says what is wrong (not an internal error, not advice that cannot help:
    --overwrite does not replace a file with an export), and nothing written."""
    from test_faults import one_line_error
    from test_report import write_run

    tmp = tmp_path.resolve()
    write_run(tmp / "runs", "hammer-v3", "eva", 8, 0, (0.1, 0.4))
    (tmp / "file").write_text("mine\n")
    assert main([a.replace("{tmp}", str(tmp)) for a in argv]) == 2
    one_line_error(capsys, says.replace("{tmp}", str(tmp)))
    assert sorted(p.name for p in tmp.iterdir()) == ["file", "runs"]
    assert (tmp / "file").read_text() == "mine\n"


def test_data_list_before_any_dataset_says_there_is_none(capsys):
    assert main(["data", "list"]) == 0  # the default root ($MINARI_DATASETS_PATH) not made yet
    assert "no Minari datasets under" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0 and f"usage: eva-rl {command}" in capsys.readouterr().out
