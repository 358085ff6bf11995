"""The layers of DESIGN §3, read from the package's own imports (ast): the picture cannot drift.

Every `import` counts, at module level or inside a function: a lazy import is still a dependency.
The rules, written once in WINGS and ALLOWED below and in docs/architecture.md:
- no import cycle anywhere in the package;
- a wing imports only the wings ALLOWED for it (nothing upward across the layers; train/ only
  the ground floor; nothing below plan/, status/ and advice/ imports them);
- only cli/ and render/ import click or rich;
- only cli/ prints or exits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shardrun"

GROUND = "ground"
# Which wing each module belongs to: a subpackage is a wing, and so is each top-level module
# that stands on a floor of its own.
WINGS = {
    "shardrun": GROUND,  # __init__: the version and the environment set before TensorFlow loads
    "shardrun.__main__": "cli",
    "shardrun.errors": GROUND,
    "shardrun.clock": GROUND,
    "shardrun.units": GROUND,
    "shardrun.paths": GROUND,
    "shardrun.validate": GROUND,
    "shardrun.tf_log": GROUND,  # imported by __init__: TensorFlow's start-up lines held to the level
    "shardrun.storage": "storage",
    "shardrun.config": "config",
    "shardrun.train": "train",
    "shardrun.journal": "journal",
    "shardrun.ledger": "ledger",
    "shardrun.session": "session",
    "shardrun.plan": "plan",
    "shardrun.advice": "advice",
    "shardrun.status": "status",
    "shardrun.worker": "worker",
    "shardrun.rounds": "worker",  # the worker's side of a collaborative run's rounds
    "shardrun.sweep": "sweep",  # deletes what retention (ledger/retention.py) lets go; the worker calls it
    "shardrun.accounts": "accounts",
    "shardrun.product": "product",
    "shardrun.demo": "demo",
    "shardrun.notebook_setup": "notebook",
    "shardrun.render": "render",
    "shardrun.cli": "cli",
}

_LIBRARY_FLOORS = {GROUND, "storage", "config", "train", "journal", "ledger", "session"}
# What each wing may import besides itself: the layers of DESIGN §3, from the ground up.
ALLOWED = {
    GROUND: set(),
    "storage": {GROUND},
    "config": {GROUND, "storage"},
    "train": {GROUND},  # the engine knows nothing of jobs, stores or ledgers
    "journal": {GROUND, "storage"},
    "ledger": {GROUND, "storage", "config", "journal"},
    "session": {GROUND, "config"},
    "plan": {GROUND, "storage", "config", "journal", "ledger", "train"},
    "status": {GROUND, "storage", "config", "journal", "ledger", "plan"},
    "advice": {GROUND, "storage", "config", "plan"},
    "sweep": {GROUND, "storage", "config", "journal", "ledger"},
    "worker": {GROUND, "storage", "config", "train", "journal", "ledger", "session", "plan", "sweep"},
    "accounts": {GROUND, "storage", "config"},
    # a run's product (export, upscale, evaluate): reads the ledger, fetches from the store, runs train/
    "product": {GROUND, "storage", "config", "train", "journal", "ledger", "plan"},
    "demo": _LIBRARY_FLOORS | {"plan", "status", "worker", "sweep", "product"},
    "notebook": set(),  # runs before shardrun's own dependencies are installed
    "render": _LIBRARY_FLOORS | {"plan", "status", "advice", "accounts", "sweep", "product"},
    "cli": set(),  # filled below: the command line may import every wing
}
ALLOWED["cli"] = set(ALLOWED) - {"cli"}

UI_LIBRARIES = ("click", "rich")
UI_WINGS = {"cli", "render"}
EXITS = {("sys", "exit"), ("os", "_exit"), ("click", "echo"), ("click", "secho")}


def module_name(path: Path) -> str:
    parts = ("shardrun",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing_of(module: str) -> str:
    for length in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:length])
        if prefix in WINGS:
            return WINGS[prefix]
    raise AssertionError(f"{module} belongs to no wing: add it to WINGS and to docs/architecture.md")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text("utf-8"), str(path)) for name, path in MODULES.items()}


def imports_of(module: str) -> list[tuple[str, int]]:
    """Returns (imported module, line) for every import in the module, lazy ones included."""
    found = []
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from shardrun.ledger import schema` imports the module shardrun.ledger.schema
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in MODULES else base, node.lineno))
    return found


def internal_imports(module: str) -> list[tuple[str, int]]:
    return [(name, line) for name, line in imports_of(module) if name in MODULES and name != module]


def test_every_module_has_a_wing():
    for module in MODULES:
        wing_of(module)  # raises, naming the module, if it has none


def test_no_import_cycle():
    graph = {m: {name for name, _ in internal_imports(m)} for m in MODULES}
    # Package __init__ files import nothing here, so an edge into a package is an edge to its
    # __init__ only: the graph is the modules' own.
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Returns the strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    wing = wing_of(module)
    wrong = [f"{module}:{line} imports {name} ({wing_of(name)})"
             for name, line in internal_imports(module)
             if wing_of(name) != wing and wing_of(name) not in ALLOWED[wing]]
    assert not wrong, f"{wing} may import only {sorted(ALLOWED[wing])}: " + "; ".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_cli_and_render_import_click_or_rich(module):
    if wing_of(module) in UI_WINGS:
        return
    wrong = [f"line {line}: {name}" for name, line in imports_of(module) if name.split(".")[0] in UI_LIBRARIES]
    assert not wrong, f"{module} imports a terminal library outside cli/ and render/: {wrong}"


def _prints_or_exits(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("print", "exit", "quit", "breakpoint"):
            found.append(f"line {node.lineno}: {func.id}()")
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            # console.print and rich's print_json write to the terminal; ctx.exit ends the process
            if (owner, func.attr) in EXITS or func.attr in ("print", "print_json") or (owner, func.attr) == ("ctx", "exit"):
                found.append(f"line {node.lineno}: {owner or '…'}.{func.attr}()")
    return found


def test_print_finder_sees_prints_and_exits():
    code = "print(1)\nsys.exit(2)\nconsole.print('x')\nos._exit(3)\nlog.info('fine')\nclick.echo('x')\n"
    assert len(_prints_or_exits(ast.parse(code))) == 5


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_cli_prints_or_exits(module):
    if wing_of(module) == "cli":
        return
    wrong = _prints_or_exits(TREES[module])
    assert not wrong, f"{module} prints or exits outside cli/ (return the text or raise instead): {wrong}"


def test_the_rules_name_every_wing_the_docs_describe():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text("utf-8")
    for prefix, wing in WINGS.items():
        shown = prefix.removeprefix("shardrun.").replace(".", "/")
        if prefix != "shardrun" and prefix != "shardrun.__main__":
            assert shown in doc, f"docs/architecture.md does not mention {shown} ({wing})"
