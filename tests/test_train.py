import pytest
import torch

from eva_rl.agent import ModelConfig, build_model
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.errors import RunError, UserError
from eva_rl.training.loop import LoopConfig, OptimConfig, Trainer, lr_lambda

TINY = ModelConfig(hidden_size=32, n_layer=1, n_head=2, context_length=5, dropout=0.1)
OPTIM = OptimConfig(lr=1e-3, warmup_steps=2, batch_size=16)


def setup(mw_root, seed=0):
    t = load_trajectories(["metaworld/push-v3/scripted-v0"], mw_root)
    torch.manual_seed(seed)
    model = build_model(TINY, t.state_dim, t.act_dim)
    return model, SegmentSampler(t, 5, 1000.0, *t.state_stats(), seed=seed)


def train(model, sampler, loop, run_dir, resume=False):
    trainer = Trainer(model, sampler, OPTIM, loop, run_dir, lambda d, s: None,
                      resume=resume, progress=False)  # fmt: skip
    return trainer.run()


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(4, 12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)


def test_a_warm_up_longer_than_the_run_is_warned_of(mw_root, tmp_path):
    model, sampler = setup(mw_root)
    optim = OptimConfig(lr=1e-3, warmup_steps=8, batch_size=16)
    with pytest.warns(UserWarning, match="warmup_steps 8 >= loop.steps 4: the learning rate rises "
                      "to 50% of optim.lr and never decays"):  # fmt: skip
        Trainer(model, sampler, optim, LoopConfig(steps=4), tmp_path, lambda d, s: None)


def test_lr_schedule_floor_ends_at_its_fraction_of_lr():
    f = lr_lambda(4, 12, floor=0.1)
    assert f(0) == 0.25 and f(4) == 1.0
    assert f(8) == pytest.approx(0.55) and f(12) == pytest.approx(0.1)
    assert f(40) == pytest.approx(0.1)
    with pytest.raises(UserError, match="final_lr_ratio must be in"):
        OptimConfig(final_lr_ratio=1.5)


def test_eval_at_adds_evaluation_steps_and_refuses_steps_outside_the_run():
    loop = LoopConfig(steps=100, eval_every=0, eval_at=[10, 25])
    assert [s for s in range(1, 101) if loop.evaluates_at(s)] == [10, 25, 100]
    loop = LoopConfig(steps=100, eval_every=40, eval_at=[25])
    assert [s for s in range(1, 101) if loop.evaluates_at(s)] == [25, 40, 80, 100]
    with pytest.raises(UserError, match=r"loop.eval_at: steps \[0, 101\] are outside 1..100"):
        LoopConfig(steps=100, eval_at=[0, 50, 101])


def test_loss_goes_down(mw_root, tmp_path):
    model, sampler = setup(mw_root)
    loop = LoopConfig(steps=120, log_every=20, save_every=120)
    history = train(model, sampler, loop, tmp_path)
    losses = [e.value for e in _scalars(tmp_path, "train/loss")]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0]
    assert history["saved_step"] == 120


def test_resume_equals_uninterrupted(mw_root, tmp_path, monkeypatch):
    loop = LoopConfig(steps=8, log_every=4, save_every=3)
    model_a, sampler_a = setup(mw_root)
    history_a = train(model_a, sampler_a, loop, tmp_path / "a")

    import eva_rl.training.loop as train_mod

    real_loss, calls = train_mod.action_loss, {"n": 0}

    def crash_at_step_5(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_loss(model, batch)

    model_b, sampler_b = setup(mw_root)
    monkeypatch.setattr(train_mod, "action_loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(model_b, sampler_b, loop, tmp_path / "b")
    monkeypatch.setattr(train_mod, "action_loss", real_loss)
    torch.manual_seed(123)  # resume must not depend on the process's RNG state
    model_c, sampler_c = setup(mw_root, seed=99)  # fresh objects; state comes from the checkpoint
    history_c = train(model_c, sampler_c, loop, tmp_path / "b", resume=True)
    c_state = model_c.state_dict()
    for name, a in model_a.state_dict().items():
        c = c_state[name]
        assert torch.equal(a, c), name
    # saved at step 3 inside a logging window (steps 1-4): the resumed run's logged
    # losses, final loss included, equal the uninterrupted run's
    assert history_c["loss"] == history_a["loss"]
    curve = lambda run: [(e.step, e.value) for e in _scalars(tmp_path / run, "train/loss")]  # noqa: E731
    assert curve("b") == curve("a") and [s for s, _ in curve("a")] == [4, 8]
    assert not list((tmp_path / "b").rglob("*.tmp*"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(mw_root, tmp_path, monkeypatch):
    import eva_rl.training.loop as train_mod

    real_loss, calls = train_mod.action_loss, {"n": 0}

    def nan_at_step_4(model, batch):
        calls["n"] += 1
        loss = real_loss(model, batch)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(train_mod, "action_loss", nan_at_step_4)
    model, sampler = setup(mw_root)
    with pytest.raises(
        RunError,
        match=r"loss became nan at step 4; the last good checkpoint "
        r"\(step 2\) is kept",
    ):
        train(model, sampler, LoopConfig(steps=10, save_every=2), tmp_path)
    state = torch.load(tmp_path / "checkpoints/latest/state.pt", weights_only=False)
    assert state["step"] == 2 and state["history"]["saved_step"] == 2  # a resume names it


def test_a_finite_loss_with_a_non_finite_gradient_is_not_checkpointed(
    mw_root, tmp_path, monkeypatch
):
    """The update of step 4 has a finite loss but a NaN gradient, which reaches the weights:
    its checkpoint is not written as a good one."""
    import eva_rl.training.loop as train_mod

    real_loss, calls = train_mod.action_loss, {"n": 0}

    def nan_gradient_at_step_4(model, batch):
        calls["n"] += 1
        loss = real_loss(model, batch)
        if calls["n"] != 4:
            return loss
        return loss + 0.0 * torch.sqrt(loss - loss.detach())  # forward + 0; backward 0 x inf

    monkeypatch.setattr(train_mod, "action_loss", nan_gradient_at_step_4)
    model, sampler = setup(mw_root)
    with pytest.raises(RunError, match=r"gradient norm became nan at step 4; the last good "
                       r"checkpoint \(step 2\) is kept"):  # fmt: skip
        train(model, sampler, LoopConfig(steps=10, save_every=2), tmp_path)
    state = torch.load(tmp_path / "checkpoints/latest/state.pt", weights_only=False)
    assert state["step"] == 2
    assert all(bool(torch.isfinite(value).all()) for value in state["model"].values())


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return acc.Scalars(tag)


def test_a_state_saved_on_a_gpu_resumes_on_any_device(tmp_path, monkeypatch):
    """`device` is a setting a resume may change: a GPU run's state loads onto the CPU (the
    model and optimizer take it where they are), and the saved losses join the new device's."""
    import torch.serialization

    from eva_rl.training.loop import Window
    from eva_rl.training.rundir import load_state

    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"model": {"w": torch.ones(2)}, "step": 5}, tmp_path / "state.pt")  # as on a GPU
    monkeypatch.undo()
    state = load_state(tmp_path / "state.pt")
    assert state["step"] == 5 and state["model"]["w"].device == torch.device("cpu")
    saved = Window([torch.tensor(0.5)], [], first_step=3).state_dict()
    window = Window.from_state(saved, torch.device("meta"))  # any device other than the CPU
    assert window.losses[0].device.type == "meta" and window.first_step == 3
