"""The package's shape, as a new reader meets it: imports flow one way (no module reaches, at any
level, a module that imports it), and no module or function outgrows a reading."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eva_rl"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports anywhere in its file (inside functions too):
    `from a.b import c` counts a.b.c if that is a module, else a.b."""

    def module_of(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {module_of(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else module_of(base))
    return {m for m in found if m and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that returns to its start, or None (DFS colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_loop_through_several_modules_and_none_in_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_flow_one_way():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "eva_rl.evaluation" in graph["eva_rl.compare"]  # the graph sees `from x import y`
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_or_function_outgrows_a_reading():
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, "split these: " + ", ".join(too_long)


@pytest.mark.parametrize("module", ["eva_rl.video", "eva_rl.data.segments", "eva_rl.agent"])
def test_lower_stages_do_not_import_the_evaluator(module):
    """The stages below evaluation (data, agent, the MP4 writer the env workers use) never
    reach the evaluator, directly or through others."""
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    seen, todo = set(), [module]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert "eva_rl.evaluation" not in seen


# The pipeline's stages, lowest first: a module may import its own stage and lower ones only.
# `data.record` records an agent's episodes through the evaluator, so it sits above evaluation;
# the rest of `data` is below the agent. Leaf modules (errors, io, layers, config, ...) and the
# entry points (cli, commands, quickstart, compare) are outside the order.
STAGES = [
    ("eva_rl.data",),
    ("eva_rl.agent",),
    ("eva_rl.eva",),
    ("eva_rl.adapters",),
    ("eva_rl.evaluation", "eva_rl.rollout"),
    ("eva_rl.data.record",),
    ("eva_rl.training",),
    ("eva_rl.online",),
    ("eva_rl.sweeps",),
    ("eva_rl.reports",),
]


def stage_of(module: str) -> int | None:
    """The rank of the longest stage prefix `module` falls under, None outside the stages."""
    best = None
    for rank, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def test_stages_import_only_their_own_and_lower_stages():
    known = modules()
    upward = []
    for name, path in known.items():
        rank = stage_of(name)
        if rank is None:
            continue
        for target in imports(name, path, known):
            theirs = stage_of(target)
            if theirs is not None and theirs > rank:
                upward.append(f"{name} -> {target}")
    assert stage_of("eva_rl.data.record") > stage_of("eva_rl.evaluation") > stage_of("eva_rl.data")
    assert not upward, "imports up the pipeline: " + ", ".join(sorted(upward))
