"""The core's layers: a module imports only its own layer and the layers below it, and
never the orchestration around it (Dagster, the asset definitions).

Each name in LAYERS is a subpackage (or top-level module) of `opensora_core`; a layer may
import the layers listed before it. Imports inside functions count: a lazy import is
still a dependency. The benchmarks (bench/) sit above the core: only `cli.py` reaches
them, lazily, for `opensora bench`."""

from __future__ import annotations

import ast
from pathlib import Path

import opensora_core

CORE = Path(opensora_core.__file__).parent
LAYERS: list[set[str]] = [
    {"utils"},
    {"config"},
    {"models", "diffusion", "tracking"},
    {"data"},  # training data: buckets, datasets, latent caches, video files
    {"curation"},  # raw files -> clips -> scores -> the training table
    {"infer"},
    {"eval"},
    {"train"},
    {"app"},  # the web app: only `opensora app` (cli) reaches it
    {"cli"},  # also the door to bench/ (above the core): `opensora bench`
]
FORBIDDEN_ROOTS = ("dagster", "dagster_mlflow", "assets_defs", "orchestration")


def _layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"opensora_core.{name} is in no layer of tests/test_layers.py: place it")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    found = []
    package = ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return sorted(found)


def _edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing part, imported part) for every import between core parts."""
    edges = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE).with_suffix("").parts
        if parts[0] == "__init__":
            continue
        for line, module in _imports(path):
            names = module.split(".")
            if names[0] == "opensora_core" and len(names) > 1 and names[1] != parts[0]:
                edges.append((str(path.relative_to(CORE.parent)), line, parts[0], names[1]))
    return edges


def test_every_core_part_has_a_layer():
    parts = {p.relative_to(CORE).with_suffix("").parts[0] for p in CORE.rglob("*.py")} - {"__init__"}
    for part in parts:
        _layer_of(part)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{file}:{line}: {src} imports {dst}" for file, line, src, dst in _edges()
              if _layer_of(dst) > _layer_of(src)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_core_never_imports_the_orchestration_around_it():
    found = [f"{path.relative_to(CORE.parent)}:{line}: {module}" for path in sorted(CORE.rglob("*.py"))
             for line, module in _imports(path) if module.split(".")[0] in FORBIDDEN_ROOTS]
    assert not found, "\n".join(found)


def test_only_the_cli_reaches_the_benchmarks_above_the_core():
    found = [f"{path.relative_to(CORE.parent)}:{line}: {module}" for path in sorted(CORE.rglob("*.py"))
             if path != CORE / "cli.py"
             for line, module in _imports(path) if module.split(".")[0] == "bench"]
    assert not found, "\n".join(found)


def test_only_the_tracking_package_imports_mlflow():
    found = [f"{path.relative_to(CORE.parent)}:{line}: {module}" for path in sorted(CORE.rglob("*.py"))
             if path.relative_to(CORE).parts[0] != "tracking"
             for line, module in _imports(path) if module.split(".")[0] == "mlflow"]
    assert not found, "\n".join(found)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the core modules it imports (`from package import module` resolved)."""
    modules = {".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("opensora_core"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    targets.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycles_between_core_modules():
    graph, cycles, state = _module_graph(), [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "opensora_core" / "data" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from opensora_core.train import loop\n\nfrom . import buckets\n")
    global CORE
    saved, CORE = CORE, tmp_path / "opensora_core"
    try:
        assert _imports(source) == [(2, "opensora_core.train"), (4, "opensora_core.data")]
        assert [(src, dst) for _, _, src, dst in _edges()] == [("data", "train")]
    finally:
        CORE = saved
