"""The house rules that keep the tree one framework, checked on the source itself.

- No import cycle among synthalign's modules, at any depth, counting imports inside
  functions (only ``if TYPE_CHECKING:`` imports, which never run, are left out).
- A function-level import defers a heavy dependency and nothing else: a heavy
  third-party module (torch, transformers, vLLM, datasets, distilabel...) or a
  first-party module that itself imports an engine (torch, transformers, vLLM, TRL,
  xgrammar...) at its top. Other first-party modules are imported at the top, except
  by the CLI, whose ``--help`` must not pay for distilabel.
- No module over 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package-dir of pyproject.toml: folder -> import prefix
PACKAGES = {
    "synthalign": "synthalign",
    "steps": "synthalign.steps",
    "pipelines": "synthalign.pipelines",
    "trainers": "synthalign.trainers",
    "cards": "synthalign.cards",
}
HEAVY = {
    "torch", "transformers", "vllm", "trl", "peft", "accelerate", "datasets", "distilabel",
    "sentence_transformers", "matplotlib", "ray", "llama_cpp", "xgrammar", "huggingface_hub",
    "pyarrow", "yake", "faiss", "httpx", "openai", "gguf", "numpy", "onnxruntime", "openvino",
    "optimum", "pandas", "scipy", "tokenizers", "gender_guesser", "psutil",
}  # fmt: skip
ENGINES = {
    "torch", "transformers", "vllm", "trl", "peft", "accelerate", "xgrammar",
    "sentence_transformers", "llama_cpp", "ray", "matplotlib",
}  # fmt: skip
LAZY_FIRST_PARTY_ALLOWED = {"synthalign.cli"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for folder, prefix in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every executed import."""
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.rsplit(".", child.level)[0]
                    base = f"{package}.{base}" if base else package
                out.append((base, in_function, child.lineno))
                out.extend(
                    (f"{base}.{alias.name}", in_function, child.lineno) for alias in child.names
                )
            visit(child, nested)

    visit(tree, False)
    return out


def _first_party(name: str) -> str | None:
    """The synthalign module an import name refers to (longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for name, _, _ in _imports(ast.parse(path.read_text(encoding="utf-8")), module):
            target = _first_party(name)
            if target and target != module and not module.startswith(f"{target}."):
                edges.add(target)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _engine_modules() -> set[str]:
    """First-party modules that import an engine at their top level."""
    heavy = set()
    for module, path in MODULES.items():
        names = _imports(ast.parse(path.read_text(encoding="utf-8")), module)
        if any(not inside and name.split(".")[0] in ENGINES for name, inside, _ in names):
            heavy.add(module)
    return heavy


def test_function_level_imports_only_defer_heavy_dependencies() -> None:
    offenders = []
    engines = _engine_modules()
    for module, path in MODULES.items():
        for name, in_function, line in _imports(
            ast.parse(path.read_text(encoding="utf-8")), module
        ):
            if not in_function:
                continue
            top = name.split(".")[0]
            if target := _first_party(name):
                if module not in LAZY_FIRST_PARTY_ALLOWED and target not in engines:
                    offenders.append(
                        f"{path.relative_to(ROOT)}:{line} imports {name} inside a function"
                    )
            elif top not in HEAVY:
                offenders.append(
                    f"{path.relative_to(ROOT)}:{line} defers {name}, which is not heavy"
                )
    assert not offenders, "\n".join(sorted(set(offenders)))


@pytest.mark.parametrize("folder", [*PACKAGES, "tests", "benchmarks"])
def test_no_module_over_600_lines(folder: str) -> None:
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
