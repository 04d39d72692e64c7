"""Fail when the package's modules import each other in a cycle.

Reads every module of `otel_workflow` with `ast` (nothing is imported) and follows the imports
made when a module loads: top-level statements, including those under `try`/`if`, but not
`if TYPE_CHECKING:` blocks or imports inside functions (those run later, by choice). Prints each
cycle found, with the modules in import order, and exits 1.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "otel_workflow"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from load_time_statements(node.orelse)
        elif isinstance(node, ast.If):
            yield from load_time_statements(node.body)
            yield from load_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from load_time_statements(block)
        else:
            yield node


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in load_time_statements(tree.body):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for imported in targets:
            # `import a.b.c` loads a, a.b and a.b.c; keep the deepest that is one of ours.
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    # A module's packages load before it: that edge is how Python works, not a choice.
    return {target for target in found if not name.startswith(target + ".")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    paths = {module_name(root, path): path for path in (root / PACKAGE).rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(name, path, modules) for name, path in paths.items()}
    found = cycles(graph)
    for cycle in found:
        print("import cycle: " + " -> ".join(cycle))
    if not found:
        print(f"no import cycle among {len(modules)} modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
