"""The import rules of docs/architecture.md, checked on the source (ast; imports under
`if TYPE_CHECKING:` are annotations only and do not count).

An edge `a → b` means module `a` imports module `b`, at module level or inside a function.
`from pkg import sub` counts as importing the submodule `sub`, not the package's re-exports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("atelier", "bot", "storage", "trainer", "discord_emulator")
MAX_LINES = 450
TRAINING_LOOP = "trainer.loop"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _files() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(name: str, path: Path) -> set[str]:
    """Every module name `name` imports (outside TYPE_CHECKING blocks)."""
    files = _files()
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = {f"{module}.{alias.name}" for alias in node.names}
            found.update(s for s in subs if s in files)
            if not subs <= set(files):  # a name from the module itself, not a submodule
                found.add(module)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module → the project modules it imports."""
    files = _files()
    return {
        name: frozenset(m for m in _imported(name, path) if m in files and m != name)
        for name, path in files.items()
    }


def _cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _reach(start: str) -> set[str]:
    """Every project module `start` loads, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for child in graph()[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def _violations(rule: str, modules: dict[str, set[str]]) -> list[str]:
    return [f"{rule}: {a} → {b}" for a, bs in sorted(modules.items()) for b in sorted(bs)]


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(graph()) == []


def test_no_import_cycles_between_packages() -> None:
    top: dict[str, set[str]] = {}
    for module, imports in graph().items():
        top.setdefault(module.split(".")[0], set()).update(m.split(".")[0] for m in imports)
    edges = {p: frozenset(deps - {p}) for p, deps in top.items()}
    assert _cycles(edges) == []


def test_the_arrows_point_one_way() -> None:
    """storage imports nothing above it; the worker never imports the command line; bot takes
    from the trainer only the pydantic config and presets."""
    bad: list[str] = []
    for module, imports in graph().items():
        if _in(module, "storage"):
            bad += _violations("storage", {module: {m for m in imports if not _in(m, "storage")}})
        if _in(module, "trainer"):
            bad += _violations(
                "trainer", {module: {m for m in imports if _in(m, "atelier", "bot")}}
            )
        if _in(module, "bot"):
            allowed = ("bot", "storage", "trainer.config", "trainer.presets", "trainer")
            bad += _violations("bot", {module: {m for m in imports if not _in(m, *allowed)}})
            bad += _violations("bot", {module: {m for m in imports if m == "trainer"}})
    assert bad == []


SHARED_WITH_INGEST = frozenset(
    {
        "storage.fsutil",  # atomic writes
        "storage.drawing",  # the fonts of every grid
        "storage.ingest.buckets",  # aspect buckets: ingest reports them, the loop trains them
        "storage.ingest.split",  # the held-out split ingest records and the loop recomputes
        "storage.base_models",  # what a catalogue entry or single file is (no database)
        "storage.model_files",  # a checkpoint's files: the trainer links them, the bot delivers
    }
)
"""storage's database-free helpers the trainer shares with ingest and the bot, so both sides
follow one rule."""


def test_the_training_loop_knows_only_its_config_and_callbacks() -> None:
    """`train()` and all it loads: no database, no worker, no Discord, no command line; from
    storage only the shared database-free helpers (which themselves reach nothing else)."""
    loaded = _reach(TRAINING_LOOP)
    forbidden = {
        m
        for m in loaded
        if _in(m, "bot", "atelier", "trainer.worker", "trainer.renders", "trainer.iterate")
        or (_in(m, "storage") and m not in SHARED_WITH_INGEST)
    }
    assert forbidden == set(), sorted(forbidden)
    for helper in SHARED_WITH_INGEST:
        assert _reach(helper) <= SHARED_WITH_INGEST, helper


def test_bot_import_path_has_no_torch() -> None:
    """Every module of the bot (extensions included) really imported: no torch or diffusers,
    and from `trainer` only the pydantic-only config and presets."""
    code = (
        "import importlib, pkgutil, sys, bot\n"
        "for info in pkgutil.walk_packages(bot.__path__, 'bot.'):\n"
        "    importlib.import_module(info.name)\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('trainer'))\n"
        "assert loaded == ['trainer', 'trainer.config', 'trainer.presets'], loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_modules_are_short_or_say_why() -> None:
    """Over ~450 lines, a module's docstring gives the reason (a line with `Length:`)."""
    long = []
    for name, path in _files().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and "Length:" not in (
            ast.get_docstring(ast.parse(text)) or ""
        ):
            long.append(f"{name} ({text.count(chr(10))} lines)")
    assert long == []


SETTINGS_CLASSES = {"Settings", "BotSettings", "TrainerSettings", "AtelierSettings"}


def test_settings_sections_live_with_their_package_and_only_atelier_builds_them() -> None:
    """storage holds the shared core, the bot its `discord` section, the worker its `worker`
    section; `atelier.settings` composes them and is the only place a settings object is built
    (entry points call its `get_settings`/`load_settings`, so every process validates it all)."""
    from atelier.settings import AtelierSettings
    from bot.settings import BotSettings
    from storage.settings import Settings
    from trainer.settings import TrainerSettings

    core = set(Settings.model_fields)
    assert not {"discord", "worker"} & core
    assert set(BotSettings.model_fields) - core == {"discord"}
    assert set(TrainerSettings.model_fields) - core == {"worker"}
    assert set(AtelierSettings.model_fields) == core | {"discord", "worker"}
    builders = []
    for name, path in _files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            called = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if called in SETTINGS_CLASSES | {"validate_settings"} and name != "atelier.settings":
                builders.append(f"{name}: {called}(…)")
    assert builders == []
