"""No import circle in the project's packages: every module's imports (top level, inside functions,
and ``importlib.import_module`` with a literal name or an f-string prefix) form a graph without cycles.

Read with ``ast``, nothing imported: a lazy import inside a function counts as much as a top-level one
(a circle that only closes at call time is still a circle)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("launch",)


def _modules(packages):
    """module name -> file, for every .py under the packages."""
    out = {}
    for pkg in packages:
        for base, _, names in os.walk(os.path.join(ROOT, pkg)):
            for name in names:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(base, name), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(base, name)
    return out


def _imported_names(path, module):
    """Names ``module`` imports: ``import a.b``, ``from a import b`` (both a and a.b), relative imports,
    ``importlib.import_module("a.b")`` and ``importlib.import_module(f"a.{x}")`` (prefix ``a.``)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names, prefixes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                prefixes.add(arg.values[0].value)
    return names, prefixes


def import_graph(packages=PACKAGES):
    modules = _modules(packages)
    graph = {}
    for module, path in modules.items():
        names, prefixes = _imported_names(path, module)
        deps = {n for n in names if n in modules}
        deps |= {m for m in modules for p in prefixes if m.startswith(p) and m != p.rstrip(".")}
        graph[module] = deps - {module}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_importlib_prefixes_count_as_imports():
    graph = import_graph()
    assert "launch.commands.run" in graph["launch.cli"]   # cli imports commands through importlib f-strings


@pytest.mark.parametrize("packages", [PACKAGES])
def test_no_import_circle(packages):
    cycle = find_cycle(import_graph(packages))
    assert cycle is None, "import circle: " + " -> ".join(cycle)
