"""Static import graph of the project's packages (ast; TYPE_CHECKING blocks skipped)."""
from __future__ import annotations
import ast, sys
from pathlib import Path

PACKAGES = ("atelier", "bot", "storage", "trainer", "discord_emulator")

def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)

def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")

def imports_of(path: Path, name: str, is_pkg: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for c in child.orelse: visit_stmt(c)
                continue
            visit_stmt(child)
    def visit_stmt(child):
        if isinstance(child, ast.Import):
            found.update(a.name for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (child.level - 1)]
                mod = ".".join(base + ([child.module] if child.module else []))
            else:
                mod = child.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in child.names)
        visit(child)
    visit(tree)
    return found

def graph(root: Path) -> dict[str, set[str]]:
    files = {}
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            if "migrations" in path.parts: continue
            files[module_name(root, path)] = path
    g = {}
    for name, path in files.items():
        raw = imports_of(path, name, path.name == "__init__.py")
        g[name] = {m for m in raw if m in files and m != name}
    return g

if __name__ == "__main__":
    g = graph(Path(sys.argv[1]))
    # cycles via Tarjan SCC
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in g:
        if v not in idx: sc(v)
    print("cycles:", out)
    for a, deps in sorted(g.items()):
        for b in sorted(deps):
            pa, pb = a.split(".")[0], b.split(".")[0]
            if pa != pb: print(f"{a} -> {b}")
