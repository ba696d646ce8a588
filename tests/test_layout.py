"""The package's shape: no import circle (deferred imports included), modules a reader can hold
in their head, and documentation whose links and `design §n` references resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "permrl"
LONG = 400  # lines; a longer module says why in its docstring ("Why this long: ...")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` but those under `if TYPE_CHECKING:` (never executed)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return nodes


def imports(path: Path, modules: set[str]) -> set[str]:
    """The permrl modules `path` imports when it runs (a function's deferred import included;
    a type checker's import under `if TYPE_CHECKING:` left out)."""
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n if n in modules else node.module for n in names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), brute-force free."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                circles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def package_graph() -> dict[str, set[str]]:
    """Module -> the permrl modules it imports; the package's own __init__ (which re-exports
    the building blocks) is left out: no module imports it."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths) - {"permrl"}
    return {m: imports(paths[m], modules) - {m} for m in modules}


def test_the_circle_finder_finds_a_circle_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_an_import_for_the_type_checker_is_not_a_runtime_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nimport a\nif TYPE_CHECKING:\n"
                      "    import b\nelse:\n    import c\ndef f():\n    import d\n")
    assert imports(module, {"a", "b", "c", "d"}) == {"a", "c", "d"}


def test_no_import_circle_in_the_package():
    graph = package_graph()
    assert graph["permrl.report.html"] >= {"permrl.report.tables"}  # the graph sees imports
    assert import_circles(graph) == []


def test_the_report_does_not_load_the_training_code():
    graph = package_graph()
    reached, todo = set(), ["permrl.report.html"]
    while todo:
        for m in graph[todo.pop()] - reached:
            reached.add(m)
            todo.append(m)
    assert not reached & {"permrl.train", "permrl.run", "permrl.ablate", "permrl.demo"}


def test_a_long_module_says_why_in_its_docstring():
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > LONG:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Why this long:" in doc, f"{path.relative_to(ROOT)}: {lines} lines"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, flags=re.M)}


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_and_anchor_resolves():
    for md in markdown_files():
        text = md.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (md.parent / path).resolve() if path else md
            assert file.exists(), f"{md.name}: link to {target}"
            if anchor and file.suffix == ".md":
                assert anchor in anchors(file.read_text()), f"{md.name}: anchor {target}"


def test_every_design_section_reference_resolves():
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs/design.md").read_text(), re.M))
    assert len(sections) >= 10
    texts = [p.read_text() for p in [*markdown_files(), *PACKAGE.rglob("*.py")]]
    cited = {n for t in texts for n in re.findall(r"design(?:\.md)? §(\d+)", t)}
    assert cited and cited <= sections, sorted(cited - sections)
