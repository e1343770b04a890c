"""The shape of the product's code, read from the source (ast: nothing is imported or run).

- No import circle between the product's modules; an import inside a function counts.
- campaigns/ never imports worker/ (the worker is built on the campaigns, not the other way).
- Nothing imports an entry point (``app.py``, ``worker/__main__.py``): they put the product together.
- docs/architecture.md's "Where things live" table names every product module, and every path it
  names exists.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Directories of Python that are not the product: the tests, the benchmarks, Alembic's migrations
# (the table names them as a whole, `migrations/`).
NOT_PRODUCT = frozenset({"tests", "bench", "migrations"})
ENTRY_POINTS = frozenset({"app", "worker.__main__"})
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def product_modules(root=ROOT):
    """``{module name: path}``: the top-level ``.py`` files and those of the app-level packages."""
    modules = {path.stem: path for path in root.glob("*.py")}
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or directory.name in NOT_PRODUCT or directory.name.startswith("."):
            continue
        for path in sorted(directory.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(node, package):
    """The dotted names an ``import`` or ``from ... import`` statement may load, longest first."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the module's package, one level up per extra dot
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root=ROOT):
    """``{module: set of product modules it imports}``, anywhere in its code (lazy imports too)."""
    modules = product_modules(root)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for dotted in _imported_names(node, package):
                # The longest prefix that is a product module: `from campaigns.rules import X` is
                # campaigns.rules, `from campaigns import metrics` is campaigns.metrics.
                while dotted and dotted not in modules:
                    dotted = dotted.rpartition(".")[0]
                if dotted and dotted != name:
                    imported.add(dotted)
        graph[name] = imported
    return graph


def import_cycles(graph):
    """Every import circle, each as ``[a, b, ..., a]`` (one per strongly connected group of modules)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:  # the root of a group: what is above it on the stack
            group = set(stack[stack.index(module) :])
            del stack[stack.index(module) :]
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_circle_through(group, graph) for group in groups]


def _circle_through(group, graph):
    """One circle of imports inside a strongly connected ``group``, from its first module back to it."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to the start
        module = queue.pop(0)
        for target in sorted(graph[module] & group):
            if target == start:
                return paths[module] + [start]
            if target not in paths:
                paths[target] = paths[module] + [target]
                queue.append(target)
    raise AssertionError(f"no circle in {group}")


def imports_between(graph, importer_prefix, imported_prefix):
    """``(importer, imported)`` pairs where a module under one package imports one under the other."""
    return sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith(importer_prefix)
        for target in targets
        if target.startswith(imported_prefix)
    )


def entry_point_imports(graph):
    """``(importer, entry point)`` pairs: a module that imports ``app`` or ``worker.__main__``."""
    return sorted((module, target) for module, targets in graph.items() for target in targets & ENTRY_POINTS)


def where_things_live(text):
    """The paths the "Where things live" table of docs/architecture.md names (in backquotes, first column)."""
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            paths.update(re.findall(r"`([^`]+)`", line.split(" | ", 1)[0]))
    return paths


def test_the_product_has_no_import_circle():
    cycles = import_cycles(import_graph())
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_campaigns_does_not_import_the_worker():
    assert imports_between(import_graph(), "campaigns.", "worker") == []


def test_nothing_imports_an_entry_point():
    assert entry_point_imports(import_graph()) == []


def test_the_checks_see_a_lazy_circle_a_package_import_and_an_entry_point_import(tmp_path):
    # The checks above pass on the product; here they must fail on a tree that breaks each rule
    # (the circle of issue 14, closed by an import inside a function).
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "worker").mkdir()
    (tmp_path / "app.py").write_text("from campaigns.demo import start\n")
    (tmp_path / "campaigns" / "demo.py").write_text("from worker.runner import run\n")
    (tmp_path / "worker" / "runner.py").write_text("def run():\n    from app import create_app\n")
    (tmp_path / "worker" / "queues.py").write_text("import worker.runner\n")
    graph = import_graph(tmp_path)
    assert import_cycles(graph) == [["app", "campaigns.demo", "worker.runner", "app"]]
    assert imports_between(graph, "campaigns.", "worker") == [("campaigns.demo", "worker.runner")]
    assert entry_point_imports(graph) == [("worker.runner", "app")]


def test_the_architecture_table_names_every_product_module_and_only_paths_that_exist():
    named = where_things_live(ARCHITECTURE.read_text())
    modules = {path.relative_to(ROOT).as_posix() for path in product_modules().values()}
    # A package's __init__.py with nothing but its docstring is no module of its own.
    modules = {path for path in modules if not _only_a_docstring(ROOT / path)}
    assert sorted(modules - named) == [], "modules missing from docs/architecture.md's table"
    assert sorted(path for path in named if not (ROOT / path).exists()) == [], "paths in the table that do not exist"


def _only_a_docstring(path):
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )
