"""The documented Python API: `import eva_rl` stays light, and docs/python-api.md's worked example
runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_import_is_light_and_names_resolve():
    """`import eva_rl`, and the sweeps (what `sweep --status` and `export` load), without torch."""
    code = ("import sys, eva_rl, eva_rl.sweeps; print('torch' in sys.modules); "
            "print(eva_rl.FinetuneConfig)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines == ["False", "<class 'eva_rl.training.finetune.FinetuneConfig'>"]
    import eva_rl

    for name in eva_rl.__all__:
        assert getattr(eva_rl, name) is not None


def test_the_worked_example_runs_as_written(mw_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(mw_root))
    monkeypatch.chdir(tmp_path)  # its runs/ land here; the shipped agent is found in the repo
    monkeypatch.setenv("EVA_RL_RUNTIME_DIR", str(tmp_path / "runtime"))
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace: dict = {}
    torch.set_num_threads(2)
    exec(compile(code, str(DOC), "exec"), namespace)
    # the runs gave their cores back: the caller's thread count, no claim left behind
    assert torch.get_num_threads() == 2
    assert not list((tmp_path / "runtime" / "cores").glob("*.claim"))
    summary, result = namespace["summary"], namespace["result"]
    assert [p.step for p in summary.eval] == [0, 10, 20] and summary.method == "eva"
    assert len(result.envs["hammer-v3"].episodes) == 3
    assert (tmp_path / "runs" / "api-example" / "summary.json").is_file()
    online = namespace["online"]  # started from that run, its episodes kept
    assert online["config"]["from_run"] == "runs/api-example"
    assert online["updates"] == 4 * online["iterations"] and online["iterations"] >= 1
    assert (tmp_path / "runs" / "api-online" / "summary.json").is_file()
