"""The import graph of the project's packages, read from the source with ``ast`` (every ``import`` and
``from ... import`` anywhere in a module, function-level ones included, plus ``importlib.import_module`` /
``__import__`` calls with a string literal or an f-string whose literal prefix names a package, e.g.
``import_module(f"captionbeam.launch.commands.{name}")``): no circle anywhere, and the layering holds
(launch -> pipelines -> model; model never imports Beam)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("model", "pipelines", "launch")
ROOT_PACKAGE = "captionbeam"
# Every folder whose Python files may import the project: the packages, their tests and the benchmarks.
IMPORTING_TREES = PACKAGES + ("tests", "benchmarks")


def _modules():
    """``{module name: path}`` of every .py file under the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = ROOT_PACKAGE + "." + os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return out


def _imported_names(path: str, module: str, is_package: bool):
    """Every module name ``path`` imports, absolute, as written (``a.b`` of ``from a.b import c`` and
    ``a.b.c`` too, in case ``c`` is a module)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if is_package else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names.append(node.args[0].value)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.JoinedStr):
            f, arg = node.func, node.args[0]
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if called in ("import_module", "__import__") and arg.values and isinstance(arg.values[0], ast.Constant):
                names.append(arg.values[0].value + "*")  # every module under that prefix
    return names


def _graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imported_names(path, name, path.endswith("__init__.py")):
            if imported.endswith("*"):
                prefix = imported[:-1]
                deps |= {m for m in modules if m.startswith(prefix) and m != prefix.rstrip(".") and m != name}
                continue
            # the deepest project module the name points at (``pipelines.shards.read.iter_shard`` -> ``...read``)
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                deps.add(".".join(parts))
        graph[name] = deps
    return graph


def _all_imports():
    modules = _modules()
    return {name: set(_imported_names(path, name, path.endswith("__init__.py"))) for name, path in modules.items()}


def _find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack = []

    def visit(n):
        colour[n] = GREY
        stack.append(n)
        for d in sorted(graph[n]):
            if colour[d] == GREY:
                return stack[stack.index(d):] + [d]
            if colour[d] == WHITE:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(graph):
        if colour[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


def test_the_reader_sees_function_level_and_importlib_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import importlib\n\ndef f():\n    from captionbeam.pipelines.shards import read\n"
                   "    return importlib.import_module('captionbeam.model.vocab')\n")
    names = _imported_names(str(src), "captionbeam.pipelines.m", False)
    assert {"captionbeam.pipelines.shards", "captionbeam.pipelines.shards.read", "captionbeam.model.vocab"} <= set(names)


def test_importlib_f_string_prefixes_count_as_imports():
    assert "captionbeam.launch.commands.run" in _graph()["captionbeam.launch.cli"]  # cli imports each command by f-string name


def test_a_cycle_is_found():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    """No circle among the modules of ``package`` together with everything they reach."""
    graph = _graph()
    full = f"{ROOT_PACKAGE}.{package}"
    reach, todo = set(), [n for n in graph if n == full or n.startswith(full + ".")]
    while todo:
        n = todo.pop()
        if n not in reach:
            reach.add(n)
            todo += graph[n]
    cycle = _find_cycle({n: graph[n] & reach for n in reach})
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_layers_launch_pipelines_model():
    """model imports neither pipelines, launch nor Beam; pipelines does not import launch."""
    bad = []
    for name, imported in _all_imports().items():
        top = name.split(".")[1]
        for i in imported:
            parts = i.split(".")
            head = parts[1] if parts[0] == ROOT_PACKAGE and len(parts) > 1 else parts[0]
            if top == "model" and head in ("pipelines", "launch", "apache_beam"):
                bad.append(f"{name} imports {i}")
            if top == "pipelines" and head == "launch":
                bad.append(f"{name} imports {i}")
    assert bad == []


def test_everything_imports_the_project_through_its_one_import_root():
    """No module of the packages, the tests or the benchmarks imports ``model``, ``pipelines`` or ``launch``
    bare: installed, they exist only as ``captionbeam.model`` etc. (a bare import works only from the
    repository root by accident of ``sys.path``)."""
    bare = []
    for tree in IMPORTING_TREES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, tree)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    for i in _imported_names(path, "x.y", False):
                        if i.split(".")[0] in PACKAGES:
                            bare.append(f"{os.path.relpath(path, ROOT)} imports {i}")
    assert bare == []


def test_the_root_package_imports_nothing_heavy():
    """``import captionbeam`` is cheap: no TensorFlow, no Beam (the API loads them when called)."""
    import subprocess
    import sys
    code = ("import sys, captionbeam; captionbeam.Captioner, captionbeam.run_job, captionbeam.job_config; "
            "print(captionbeam.__version__, 'tensorflow' in sys.modules, 'apache_beam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    version, tf_loaded, beam_loaded = out.stdout.split()
    assert version[0].isdigit() and (tf_loaded, beam_loaded) == ("False", "False")


TEST_FOLDERS_OUTSIDE_THE_TREE = ("journeys", "faults", "plugins")   # walks across commands; fixtures


def test_tests_mirror_the_tree():
    """A module's tests are found by its name: every ``tests/<package>/test_<name>[_<concern>].py`` names a
    module (or subpackage) ``<name>`` of ``<package>``; journeys, the fault matrix and the fixtures have
    folders of their own, and only whole-tree tests stay at the top."""
    modules = {m.split(".")[-1] for m in _modules()} | {m.split(".")[-2] for m in _modules() if m.count(".") > 1}
    stray = []
    for entry in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        path = os.path.join(ROOT, "tests", entry)
        if os.path.isdir(path) and entry in PACKAGES:
            pkg_modules = {m.split(".")[-1] for m in _modules() if m.startswith(f"{ROOT_PACKAGE}.{entry}.")}
            for f in sorted(os.listdir(path)):
                if f.startswith("test_") and f.endswith(".py"):
                    words = f[len("test_"):-3].split("_")
                    if not any("_".join(words[:i]) in pkg_modules for i in range(1, len(words) + 1)):
                        stray.append(f"tests/{entry}/{f} names no module of {entry}")
        elif os.path.isdir(path) and entry not in TEST_FOLDERS_OUTSIDE_THE_TREE + ("__pycache__",):
            stray.append(f"tests/{entry}/ is neither a package's mirror nor {TEST_FOLDERS_OUTSIDE_THE_TREE}")
        elif entry.startswith("test_") and entry not in ("test_imports.py", "test_api.py", "test_gpu_benchmark.py"):
            stray.append(f"tests/{entry} belongs in tests/<package>/")
    assert modules and stray == []


def _private_uses(path: str, module: str):
    """``other_module._name`` uses in ``path``: names imported from another project module whose name
    starts with ``_``, and ``alias._name`` on an alias bound to another project module."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    modules = _modules()
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(ROOT_PACKAGE + "."):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif a.name.startswith("_") and node.module != module:
                    found.append(f"{module} imports {node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != module:
            found.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    """A leading underscore means "this module's own": no module of the three packages imports or reaches
    into another module's private name (make it public, with a docstring, where another module needs it)."""
    bad = []
    for name, path in _modules().items():
        bad += _private_uses(path, name)
    assert bad == []


def test_a_private_use_is_found(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import captionbeam.pipelines.io as pio\nfrom captionbeam.model.decode import _token_mask\n"
                   "x = pio._secret\n")
    assert sorted(_private_uses(str(src), "captionbeam.pipelines.m")) == [
        "captionbeam.pipelines.m imports captionbeam.model.decode._token_mask",
        "captionbeam.pipelines.m uses captionbeam.pipelines.io._secret"]
