"""The import contract: the wings stack in one order, imports go only downward, no cycles.

Every `import` counts, the ones inside functions too (they hide cycles otherwise). From the
ground up:

    errors, defaults, hub, access, workspace    the ground: no project imports but the ground's,
    jobs.record/background/processes/slot/...   and the execution core every wing may use: job
                                                 records, detached processes, the device slot
    data                                         targets, prompts, the reference's rows
    models                                       loading, the library, adapter files
    config                                       mashup.toml: which base, library, targets
    selection                                    scoring, the score store, the bank
    merging                                      merge methods, weights, recycle's search
    training                                     the loop, the mashup init
    compare                                      parity, the protocol's tables, the predictor
    jobs                                         one execution layer: records, processes, runs
    study                                        the leave-one-out study and its engine
    demo                                         the embedded world and its first-open content
    views                                        what the pages show (no streamlit)
    cli                                          the `mashup` command
    app.py, pages/                               the dashboard: views, and jobs to launch

A module may import its own package and anything below it; pages import `views` (and the
ground, and `jobs` to launch), nothing else of the core. `make lint` runs this file too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUND = ("errors", "defaults", "hub", "access", "workspace")
LAYERS = [*GROUND, "data", "models", "config", "selection", "merging", "training", "compare",
          "jobs", "study", "demo", "views", "cli"]
RANK = {name: (0 if name in GROUND else i - len(GROUND) + 1) for i, name in enumerate(LAYERS)}
# The execution layer's core sits at the ground: a scoring call queues for the device slot,
# a recycle search starts a background job; these modules import only the ground.
GROUND_MODULES = {f"mashup_core.jobs.{m}" for m in ("record", "background", "processes", "slot",
                                                    "devices")}
PAGES_MAY = {"views", "jobs", *GROUND}


def rank(module: str) -> int | None:
    """The layer of a module: its wing's, or the ground for the execution core."""
    if any(module == m or module.startswith(m + ".") for m in GROUND_MODULES):
        return 0
    wing = _wing(module)
    return RANK.get(wing) if wing is not None else None


def _wing(module: str) -> str | None:
    """`mashup_core.selection.scoring` -> 'selection'; None outside the core."""
    parts = module.split(".")
    return parts[1] if parts[0] == "mashup_core" and len(parts) > 1 else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package
                package = here.split(".")[: len(here.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((base, node.lineno))
            # `from mashup_core.views import catalog` may import the submodule catalog (names
            # that are not modules drop out: the cycle search keeps only modules)
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names
                      if base == "mashup_core" or base.startswith("mashup_core.")]
    return found


def core_files() -> list[Path]:
    return sorted((ROOT / "mashup_core").rglob("*.py"))


def violations() -> list[str]:
    out = []
    for path in core_files():
        here = _module_name(path)
        wing = _wing(here)
        if wing is None:
            continue
        if wing not in RANK:
            out.append(f"{path.relative_to(ROOT)}: the wing {wing!r} has no place in the layers")
            continue
        mine, flagged = rank(here), set()
        for target, line in _imports(path):
            other = _wing(target)
            if other is None or (other == wing and here not in GROUND_MODULES) or line in flagged:
                continue
            theirs = rank(target)
            if theirs is None or theirs > mine:
                flagged.add(line)  # one line, one report (`from a import b` names a and a.b)
                out.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}, a layer "
                           "above it")
    for path in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        flagged = set()
        for target, line in _imports(path):
            other = _wing(target)
            if other is not None and other not in PAGES_MAY and line not in flagged:
                flagged.add(line)
                out.append(f"{path.relative_to(ROOT)}:{line}: a page imports {target} (pages "
                           "import views, and jobs to launch)")
    return out


def cycles() -> list[list[str]]:
    """Module-level cycles of the core's import graph (every import, any depth)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in core_files()}
    for path in core_files():
        here = _module_name(path)
        graph[here] = {t for t, _ in _imports(path) if t in modules and t != here}
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_imports_only_go_down():
    bad = violations()
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    found = cycles()
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_check_catches_what_it_forbids(tmp_path, monkeypatch):
    """A data module that reaches up into study, a page that imports selection, and a cycle
    inside one wing: each is named (the check is not a test that cannot fail)."""
    for rel, text in {
        "mashup_core/data/rows.py": "def f():\n    from mashup_core.study import spec\n",
        "mashup_core/data/a.py": "from mashup_core.data import b\n",
        "mashup_core/data/b.py": "import mashup_core.data.a\n",
        "mashup_core/study/spec.py": "",
        "pages/launch.py": "from mashup_core.selection.scoring import SCORERS\n",
        "app.py": "from mashup_core import views\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)  # the checker reads this tree instead
    bad, loops = violations(), cycles()
    assert bad == ["mashup_core/data/rows.py:2: mashup_core.data.rows imports mashup_core.study, "
                   "a layer above it",
                   "pages/launch.py:1: a page imports mashup_core.selection.scoring (pages import "
                   "views, and jobs to launch)"]
    assert loops == [["mashup_core.data.a", "mashup_core.data.b", "mashup_core.data.a"]]


if __name__ == "__main__":  # `python tests/test_layers.py`: the contract's report (make lint)
    bad, loops = violations(), cycles()
    print(f"{len(bad)} upward imports, {len(loops)} cycles")
    print("\n".join(bad))
    print("\n".join(" -> ".join(c) for c in loops))
    raise SystemExit(1 if bad or loops else 0)
