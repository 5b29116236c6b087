"""The shape of the code: what the manager may load, and imports that go one way."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("cv2", "torch", "diffusers", "transformers", "aiortc")
# The manager shares with the worker and the TTS and ASR servers only the contracts package; it
# runs them as commands, never imports them.
COMPONENTS = ("lipsync_worker", "tts_services", "asr_services")


def test_the_manager_never_loads_opencv_torch_webrtc_or_the_components():
    """The API and the supervisor run on every host, GPU or not: every module of the manager is
    imported in a fresh interpreter, and none of the heavy libraries, nor any module of the worker
    or the TTS or ASR servers, may come with it."""
    code = ("import json, pkgutil, importlib, sys, avatar_manager\n"
            "for m in pkgutil.walk_packages(avatar_manager.__path__, 'avatar_manager.'):\n"
            "    importlib.import_module(m.name)\n"
            f"print(json.dumps([h for h in {HEAVY!r} if h in sys.modules]))\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {COMPONENTS!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy, components = map(json.loads, done.stdout.splitlines()[-2:])
    assert heavy == []
    assert components == []


def _imports_of(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """Every import statement of the package, lazy ones inside functions too, of a forbidden package."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in forbidden]
    return found


def test_no_manager_module_imports_the_worker_or_the_tts_or_asr_servers():
    assert _imports_of("avatar_manager", COMPONENTS) == []


def test_the_contracts_import_no_component_and_nothing_heavy():
    """What the services share must load in any of them, the manager included."""
    assert _imports_of("contracts", (*COMPONENTS, "avatar_manager", *HEAVY)) == []


def _imports(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports at its top level."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for node in ast.parse(path.read_text()).body:  # top level only: a function's import is lazy
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                    target = f"{parent}.{node.module}" if node.module else parent
                    names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
                else:
                    names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n for n in names if n.startswith(package + ".") or n == package}
        graph[module] = found
    known = set(graph)
    return {m: {t for t in targets if t in known and t != m} for m, targets in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    for package in ("avatar_manager", "lipsync_worker", "tts_services", "asr_services", "contracts"):
        graph = _imports(package)
        cycle = _cycle(graph)
        assert cycle is None, " -> ".join(cycle)
    # The graph is really read: a known edge is in it.
    assert "avatar_manager.placement" in _imports("avatar_manager")["avatar_manager.store.base"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
