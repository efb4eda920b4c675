"""The package's layers (docs/architecture.md, DESIGN.md): imports run down the layer order
only, and no module imports itself back through others (no cycles).

Every `import` and `from ... import` counts, also those inside functions: an import put
inside a function to dodge a cycle is still an edge of the graph. Imports under
`if TYPE_CHECKING:` never run, so they make no cycle; they must still run down the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Top to bottom: a module may import its own layer and the layers above it.
LAYERS = (
    ("base", ("softprompt", "softprompt.errors", "softprompt.registry", "softprompt.paths")),
    ("config", ("softprompt.config",)),
    ("data", ("softprompt.data",)),
    ("tasks", ("softprompt.tasks",)),
    ("backbones", ("softprompt.backbones",)),
    ("artifacts", ("softprompt.artifacts",)),
    ("tuners", ("softprompt.tuners",)),
    ("inference", ("softprompt.inference",)),
    ("train", ("softprompt.train",)),
    ("serving", ("softprompt.serving",)),
    ("workflows", ("softprompt.workflows",)),
    ("commands", ("softprompt.commands", "softprompt.__main__")),
)


def _is_settings(module: str) -> bool:
    # A tuner's settings and registration (`tuners/<method>/config.py`, `spec.py`: pydantic
    # and dataclasses only) and the family table (`backbones/spec.py`) are the config
    # layer's: the run config is built from them, as PEFT's config classes stand apart
    # from its tuner modules.
    parts = module.split(".")
    in_tree = parts[:2] in (["softprompt", "tuners"], ["softprompt", "backbones"])
    return in_tree and parts[-1] in ("config", "spec")


def layer_of(module: str) -> int:
    if _is_settings(module):
        return 1
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = module == prefix
            below = module.startswith(prefix + ".") and prefix != "softprompt"
            if (exact or below) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank < 0:
        raise AssertionError(f"{module} is in no layer; add its package to LAYERS")
    return rank


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def _imported(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        return [f"{base}.{a.name}" for a in node.names] + [base]
    return []


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for n in ast.walk(node))
    return out


def import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_only(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            for name in _imported(node, package):
                if name.startswith("softprompt"):
                    target = _resolve(name, known)
                    if target and target != module:
                        edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(runtime_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                names = LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0]
                upward.append(f"{module} ({names[0]}) imports {target} ({names[1]})")
    assert not upward, "imports up the layers:\n" + "\n".join(sorted(upward))


def test_errors_is_a_leaf():
    assert not import_graph()["softprompt.errors"]


def test_the_checker_sees_cycles_and_upward_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("softprompt.train.loop") > layer_of("softprompt.backbones.base")
    assert layer_of("softprompt.tuners.lora.config") == layer_of("softprompt.config.run")
    assert layer_of("softprompt.registry") == 0


def test_no_function_over_80_lines():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
