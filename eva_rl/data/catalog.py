"""Where Minari datasets live, how they are installed atomically, and what they contain.

Minari writes a dataset in place under its final id, so a crash mid-write would leave a broken
dataset that later loads fail on. We write into a hidden staging root (Minari skips hidden
folders) and move the finished folder into place with one `rename`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from eva_rl.data.checks import check_episode, check_written
from eva_rl.errors import RunError, UserError

SUMMARY_FILE = "eva_rl_summary.json"
STAGING_DIR = ".eva_rl-staging"
REPLACED_DIR = "replaced"  # in a staging folder: the datasets an --overwrite moved aside


def dataset_id(task: str) -> str:
    """The id of a Meta-World task's scripted-expert dataset (what `data build` writes)."""
    return f"metaworld/{task}/scripted-v0"


def suite_datasets(suite) -> list[str]:
    """The Minari ids of a suite's data: Meta-World tasks' scripted-expert datasets, or the
    datasets a gymnasium suite declares."""
    return [dataset_id(t) for t in suite.tasks] if suite.family == "metaworld" else suite.datasets


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The Minari root: `root`, else `$MINARI_DATASETS_PATH`, else `~/.minari/datasets`."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser().resolve() if env else Path.home() / ".minari" / "datasets"


@contextlib.contextmanager
def minari_root(root: Path) -> Iterator[None]:
    """Point Minari's functions at `root` for the duration of the block."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def success_infos(success) -> dict[str, np.ndarray]:
    """An episode's Minari `infos` from the env's per-step `success` (NaN where it reported
    none): T+1 entries, 0 at reset, or none unless every step reported it."""
    success = np.asarray(success, dtype=np.float64)
    return {} if np.isnan(success).any() else {"success": np.r_[0.0, success]}


def check_id(dataset_id: str) -> None:
    """`dataset_id` is one Minari can write: NAMESPACE/NAME-vN (Minari's own format check)."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)  # an id without -vN fails inside it (int(None))
    except (ValueError, TypeError):
        raise UserError(
            f"dataset id {dataset_id!r} is not a Minari id: write NAMESPACE/NAME-vN (letters, "
            "digits, - and _; a namespace of 2 characters or more), e.g. test/pendulum-v0"
        ) from None


def dataset_dir(root: Path, dataset_id: str) -> Path:
    return root / dataset_id


def exists(root: Path, dataset_id: str) -> bool:
    return (dataset_dir(root, dataset_id) / "data").is_dir()


@contextlib.contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A private staging root under `root`, removed on exit whatever happens."""
    _remove_stale_staging(root)
    path = root / STAGING_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only if no other build is staging


def install(staged_root: Path, root: Path, dataset_id: str, overwrite: bool) -> None:
    """Move a finished dataset from the staging root to its final place in one rename."""
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    final = dataset_dir(root, dataset_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if final.exists():
        if not overwrite:
            raise UserError(f"dataset {dataset_id} already exists at {final}; pass --overwrite")
        trash = dataset_dir(staged_root / REPLACED_DIR, dataset_id)
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(final, trash)
    try:
        os.rename(dataset_dir(staged_root, dataset_id), final)
    except BaseException:  # an error or an interrupt: the old dataset back, not left to cleanup
        if trash is not None:
            os.rename(trash, final)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    namespace = parse_dataset_id(dataset_id)[0]
    if namespace:
        with minari_root(root):
            if namespace not in list_local_namespaces():
                create_namespace(namespace)


def check_room(staged: Path, dataset_id: str, episodes: list[dict[str, Any]]) -> None:
    """Refuse, before HDF5 starts, a dataset the disk cannot hold: h5py meeting a full disk
    midway ends the process in a segmentation fault, not an error. Arrays as float64 and infos
    as large again (success flags, rewards terms), twice for headroom."""
    needed = 2 * sum(
        2 * np.asarray(e[key]).size * 8
        for e in episodes
        for key in ("observations", "actions", "rewards")
    )
    staged.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(staged).free
    if free < needed:
        raise RunError(
            f"dataset {dataset_id} was not written: it needs about {needed / 2**20:.1f} MiB and "
            f"{staged.parent} has {free / 2**20:.1f} MiB free; free space or choose another root"
        )


def write_dataset(
    staged: Path,
    root: Path,
    dataset_id: str,
    episodes: list[dict[str, Any]],
    env,
    algorithm: str,
    description: str,
    requirements: list[str],
    summary: dict[str, Any],
    config,
    overwrite: bool,
) -> dict[str, Any]:
    """Write `episodes` (observations T+1, actions, rewards, terminations, truncations, infos,
    seed) as Minari dataset `dataset_id` in the staging root `staged`, with our summary and
    the config that made it, then move it into `root` in one rename. Minari's own writer
    (`create_dataset_from_buffers`), so no jax is needed."""
    import warnings

    import minari
    from minari.data_collector import EpisodeBuffer

    from eva_rl.config import save_config
    from eva_rl.io import atomic_write_json

    check_written(dataset_id, episodes)
    check_room(staged, dataset_id, episodes)
    buffers = [
        EpisodeBuffer(
            id=i,
            seed=e.get("seed"),
            observations=e["observations"],
            actions=e["actions"],
            rewards=e["rewards"],
            terminations=e["terminations"],
            truncations=e["truncations"],
            infos=e["infos"],
        )
        for i, e in enumerate(episodes)
    ]
    with minari_root(staged), warnings.catch_warnings():
        # Minari nags about a missing e-mail and permalink; the provenance is in the description.
        warnings.filterwarnings("ignore", message=".*is set to None", category=UserWarning)
        dataset = minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            eval_env=env.spec,
            algorithm_name=algorithm,
            author="eva_rl",
            description=description,
            requirements=requirements,
        )
        summary = {**summarize(dataset), **summary, "finite": True}  # checked: list trusts it
    target = dataset_dir(staged, dataset_id)
    atomic_write_json(target / SUMMARY_FILE, summary)
    save_config(config, target / "eva_rl_build.yaml")
    install(staged, root, dataset_id, overwrite=overwrite)
    return summary


def _remove_stale_staging(root: Path) -> None:
    """Drop staging folders of builds that were killed (their process no longer exists)."""
    base = root / STAGING_DIR
    if not base.is_dir():
        return
    for path in base.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _restore_replaced(path / REPLACED_DIR, root)
            shutil.rmtree(path, ignore_errors=True)


def _restore_replaced(replaced: Path, root: Path) -> None:
    """A build killed between `install`'s two renames left the dataset it was replacing in its
    staging folder: put it back where no new one has arrived since."""
    if not replaced.is_dir():
        return
    for data in sorted(replaced.rglob("data")):  # a Minari dataset folder holds data/
        final = root / data.parent.relative_to(replaced)
        if data.is_dir() and not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(data.parent, final)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(dataset_id: str, root: Path | None = None):
    """`minari.load_dataset` with a readable error for a missing id."""
    import minari

    root = datasets_root(root)
    if not exists(root, dataset_id):
        raise UserError(
            f"Minari dataset {dataset_id!r} not found under {root}; build it with "
            "`eva-rl data build` or set MINARI_DATASETS_PATH"
        )
    with minari_root(root):
        try:
            dataset = minari.load_dataset(dataset_id)
            if dataset.total_episodes:
                dataset[dataset.total_episodes - 1]  # opens the data file: HDF5 finds truncation
        except Exception as e:  # h5py, JSON and Minari's own errors: a damaged dataset
            raise UserError(
                f"Minari dataset {dataset_id!r} under {root} cannot be read ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); rebuild it (eva-rl data build "
                "--overwrite) or delete it"
            ) from None
    if dataset.total_episodes == 0:
        raise UserError(f"Minari dataset {dataset_id!r} under {root} has no episodes; rebuild it")
    return dataset


def summarize(dataset) -> dict[str, Any]:
    """Episode statistics of any Minari dataset; success rates only where infos hold `success`.
    Refuses a dataset holding NaN or inf, naming the episode."""
    returns, lengths, any_success, final_success = [], [], [], []
    for episode in dataset.iterate_episodes():
        check_episode(dataset, episode)
        returns.append(float(np.sum(episode.rewards)))
        lengths.append(len(episode.rewards))
        success = (episode.infos or {}).get("success")
        if success is not None:
            success = np.asarray(success)[1:]  # entry 0 is the reset info
            any_success.append(float(success.any()))
            final_success.append(float(success[-1]))
    returns_arr = np.asarray(returns)
    return {
        "dataset_id": dataset.spec.dataset_id,
        "episodes": len(returns),
        "transitions": int(np.sum(lengths)),
        "return_mean": float(returns_arr.mean()),
        "return_min": float(returns_arr.min()),
        "return_max": float(returns_arr.max()),
        "success_any": float(np.mean(any_success)) if any_success else None,
        "success_final": float(np.mean(final_success)) if final_success else None,
        "success_final_top": top_return_success(returns_arr, final_success),
    }


def top_return_success(returns: np.ndarray, final_success: list[float]) -> float | None:
    """Final-step success among the best-return tenth of the episodes (at least one): how far
    return stands for success in the data. A DT conditioned on a high return imitates these
    episodes, and online fine-tuning chases return; where they mostly fail (stick-pull's
    scripted data: 0.40 against 0.18 overall, its two best episodes failures), return is a
    poor guide to success. None unless every episode records success."""
    if not final_success or len(final_success) != len(returns):
        return None
    best = np.argsort(-returns, kind="stable")[: max(1, len(returns) // 10)]
    return float(np.mean(np.asarray(final_success)[best]))


def local_ids(root: Path) -> list[str]:
    """Every dataset id under `root`: each folder holding a `data/` folder (what Minari lists,
    and also the datasets too damaged for Minari to list), hidden folders skipped."""
    ids = []
    for data in sorted(root.rglob("data")):
        relative = data.parent.relative_to(root)
        if data.is_dir() and not any(part.startswith(".") for part in relative.parts):
            ids.append(relative.as_posix())
    return ids


def list_summaries(root: Path | None = None) -> list[dict[str, Any]]:
    """Every local dataset with its statistics; a dataset that cannot be read is listed with
    `broken` saying why, instead of stopping the listing. A `root` given that is not there, or
    any root that is a file, is refused (the default root may not exist yet: no datasets)."""
    given, root = root is not None, datasets_root(root)
    if root.exists() != root.is_dir() or (given and not root.exists()):
        what = "a file" if root.exists() else "not there"
        raise UserError(f"the datasets root {root} is {what}; give --root the folder that holds "
                        "the Minari datasets (NAMESPACE/NAME-vN inside it)")  # fmt: skip
    if not root.is_dir():
        return []
    out = []
    for dataset_id in local_ids(root):
        try:
            out.append(read_summary(dataset_id, root))
        except UserError as e:
            out.append({"dataset_id": dataset_id, "broken": str(e)})
    return out


def read_summary(dataset_id: str, root: Path | None = None) -> dict[str, Any]:
    """A dataset's statistics: our summary file when present (checked against the data: the
    dataset must open and hold as many episodes; its data were found finite when written),
    else computed from the data, which are checked for NaN and inf on the way."""
    root = datasets_root(root)
    dataset = load(dataset_id, root)
    summary_path = dataset_dir(root, dataset_id) / SUMMARY_FILE
    if not summary_path.is_file():
        return summarize(dataset)
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError):
        return summarize(dataset)  # our cache is damaged; the data are the truth
    if not isinstance(summary, dict):
        return summarize(dataset)
    stale = summary.get("success_final") is not None and "success_final_top" not in summary
    # Written by an older eva_rl, or edited or damaged since: the data are the truth.
    if summary.get("finite") is not True or stale or not _whole(summary):
        return {**summary, **summarize(dataset)}
    if summary.get("episodes") != dataset.total_episodes:
        raise UserError(
            f"Minari dataset {dataset_id!r} holds {dataset.total_episodes} episodes but its "
            f"summary says {summary.get('episodes')}; rebuild it (eva-rl data build --overwrite)"
        )
    return summary


def _whole(summary: dict[str, Any]) -> bool:
    """Every statistic `summarize` writes is there with its type, so a summary can be trusted
    (and printed) only as a whole: a dropped key or a `"n/a"` means recomputing."""

    def number(value: Any) -> bool:
        return type(value) in (int, float) and math.isfinite(value)

    success = [summary.get(k) for k in ("success_any", "success_final", "success_final_top")]
    return (
        isinstance(summary.get("dataset_id"), str)
        and all(type(summary.get(k)) is int for k in ("episodes", "transitions"))
        and all(number(summary.get(k)) for k in ("return_mean", "return_min", "return_max"))
        and all(v is None or number(v) for v in success)
        and (success[0] is None) == (success[1] is None)  # printed together
    )


def format_summary(s: dict[str, Any]) -> str:
    """One line per dataset, as `data build` and `data list` print it."""
    if "broken" in s:
        return f"{s['dataset_id']}: BROKEN: {s['broken']}"
    success, top = "", s.get("success_final_top")
    if s.get("success_any") is not None:
        success = f"  success any {s['success_any']:.2f} final {s['success_final']:.2f}"
        success += "" if top is None else f" (best-return tenth {top:.2f})"
    return (
        f"{s['dataset_id']}: {s['episodes']} episodes, {s['transitions']} steps, return "
        f"{s['return_mean']:.1f} [{s['return_min']:.1f}, {s['return_max']:.1f}]{success}"
    )
