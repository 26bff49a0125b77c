"""The architecture stays as documented (docs/architecture.md): imports go one way only.

    reproduce  ->  evals  ->  dadpo (data, loading, cache, config only)  ->  baselines  ->  torch
    reproduce  ->  dadpo

Every import of every module is read from its source (function-local ones included), so a cycle
cannot hide behind a late import.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("baselines", "dadpo", "evals", "reproduce")
# what each package may import from the others (None = every module of that package)
ALLOWED = {
    "baselines": {},
    "dadpo": {"baselines": None},
    "evals": {"dadpo": {"dadpo.cache", "dadpo.modeling", "dadpo.assets", "dadpo.data", "dadpo.config"}},
    "reproduce": {"dadpo": None, "evals": None, "baselines": None},
}
# liger_kernel: the optional fused LM-head kernels (baselines.head), torch underneath, imported on use
THIRD_PARTY_IN_BASELINES = {"torch", "typing", "math", "__future__", "dataclasses", "liger_kernel"}


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            tree.package = ".".join(parts[:-1])  # what a relative import is relative to
            yield ".".join(parts).removesuffix(".__init__"), tree


def imports(name: str, tree) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import in the module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = tree.package.split(".")[: len(tree.package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out += [(mod, a.name, node.lineno) for a in node.names]
    return out


def test_imports_follow_the_layers_and_use_no_private_names():
    bad = []
    for name, tree in modules():
        pkg = name.split(".")[0]
        for mod, what, line in imports(name, tree):
            top = mod.split(".")[0]
            if pkg == "baselines" and top not in PACKAGES and top not in THIRD_PARTY_IN_BASELINES:
                bad.append(f"{name}:{line} imports {mod} (the loss layer imports only torch)")
            if top == pkg or top not in PACKAGES:
                continue
            allowed = ALLOWED[pkg].get(top, set())
            if allowed is not None and mod not in allowed:
                bad.append(f"{name}:{line} imports {mod} ({pkg} may not import it)")
            if what and what.startswith("_"):
                bad.append(f"{name}:{line} imports the private name {mod}.{what}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    ours = dict(modules())
    graph = {}
    for name, tree in ours.items():
        deps = set()
        for mod, what, _ in imports(name, tree):
            for cand in (f"{mod}.{what}" if what else None, mod):
                if cand in ours and cand != name:
                    deps.add(cand)
                    break
        graph[name] = deps
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
