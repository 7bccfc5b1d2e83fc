"""A report checks its hypotheses file's pre-registration: the file's last commit (git committer
time) against the TensorBoard wall times of the runs its hypotheses test."""

import os
import subprocess
import time

import pytest

from eva_rl.reports.registration import check_registration

T0 = 1_800_000_000.0  # the tested runs' first event; their last events at T0 + 100 and + 200


def git(repo, *args, when=None):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    if when is not None:
        env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = f"@{int(when)} +0000"
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def runs_made(root):
    """Two runs' TensorBoard files, each run resumed once (two files), written record by record
    so that every event's wall time is the test's own (a SummaryWriter stamps its first event
    with the clock)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    runs = []
    for name, end in (("a", T0 + 100), ("b", T0 + 200)):
        for part, times in enumerate(((T0, T0 + 10), (T0 + 50, end))):
            events = root / name / "tb" / f"part{part}" / "events.out.tfevents.0.test"
            events.parent.mkdir(parents=True)
            with open(events, "wb") as f:
                for step, wall_time in enumerate(times):
                    RecordWriter(f).write(Event(wall_time=wall_time, step=step).SerializeToString())
        runs.append(root / name)
    return runs


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "h.yaml").write_text("hypotheses: []\n")
    return repo


def commit(repo, when):
    git(repo, "add", "h.yaml")
    git(repo, "commit", "-q", "-m", "design", when=when)


@pytest.mark.parametrize(
    "when, holds, words",
    [
        (T0 - 3600, True, "Pre-registered: `{path}` was last changed by commit"),
        (T0 - 3600, True, "committed before any of them started."),
        (T0 + 60, True, "committed before any of them finished (some had started)."),
        (T0 + 150, False, "**Not pre-registered**: `{path}` was last changed by commit"),
    ],
)
def test_the_file_commit_against_the_first_start_and_finish(repo, tmp_path, when, holds, words):
    """Files 'written by the runs' are faked only in their wall times: the runs start at T0 (the
    earliest event of any file of a resumed run) and the first finishes at T0 + 100."""
    path = repo / "h.yaml"
    commit(repo, when)
    found = check_registration(path, runs_made(tmp_path / "runs"))
    assert (found.runs, found.first_start, found.first_finish) == (2, T0, T0 + 100)
    assert found.committed == int(when) and len(found.commit) == 40
    assert found.holds is holds
    assert words.format(path=path) in found.sentence()
    assert "2027-01-15 08:00 UTC" in found.sentence()  # T0, as a reader reads it
    plain = words.format(path=path).replace("`", "").replace("**", "")  # the terminal's
    assert plain in found.sentence(markdown=False) and not {"`", "*"} & set(found.sentence(False))


def test_a_later_change_counts_not_the_first_commit(repo, tmp_path):
    path = repo / "h.yaml"
    commit(repo, T0 - 3600)
    path.write_text("hypotheses: [changed]\n")
    commit(repo, T0 + 150)
    assert check_registration(path, runs_made(tmp_path / "runs")).holds is False


@pytest.mark.parametrize(
    "state, reason",
    [
        ("dirty", "the file has changes that are not committed"),
        ("never", "the file was never committed"),
        ("no repo", "the file is not in a git repository"),
        ("shallow", "a shallow clone lacks the file's history (git fetch --unshallow)"),
    ],
)
def test_what_cannot_be_checked_is_said_and_not_claimed(repo, tmp_path, state, reason):
    path = repo / "h.yaml"
    if state == "dirty":
        commit(repo, time.time())
        path.write_text("hypotheses: [edited]\n")
    elif state == "no repo":
        path = tmp_path / "elsewhere.yaml"
        path.write_text("hypotheses: []\n")
    elif state == "shallow":
        commit(repo, time.time())
        (repo / "other").write_text("x")
        git(repo, "add", "other")
        git(repo, "commit", "-q", "-m", "second")
        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(clone))
        path = clone / "h.yaml"
    found = check_registration(path, runs_made(tmp_path / "runs"))
    assert found.holds is None
    assert found.sentence() == f"Pre-registration of `{path}` cannot be checked here: {reason}."
    if state == "dirty":
        git(repo, "checkout", "h.yaml")  # the committed file again: now it can be
        assert check_registration(path, []).sentence().endswith("cannot be checked.")
