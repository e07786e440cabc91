"""The floor plan holds: layers import one way (core <- engines <- competitions <- playbooks <- jobs <- cli),
no import cycle, no module past ~400 lines or function past ~60 (fit() excepted), and no competition
named outside competitions/ (capabilities are attributes of a Competition, never `if name == ...`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..conftest import ROOT

PACKAGE = ROOT / "kaggle_kit"
LAYERS = [  # each may import its own layer and those before it
    {"errors", "budget", "progress", "metrics", "io", "env", "hardware", "templates", "config"},
    {"provision", "models", "heads", "embed", "infer", "train", "serve"},
    {"competitions"},
    {"playbooks"},
    {"jobs"},
    {"cli", "kaggle", "__main__"},
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 70  # ~60 with the slack of a docstring; fit() is the written-out loop
LONG_ALLOWED = {("train/loop.py", "fit")}


def modules() -> dict[str, Path]:
    """kaggle_kit's modules by dotted name (the spec folders' prepare.py files are no modules)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "specs" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kaggle_kit modules `name` imports anywhere in its file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found |= {base, *(f"{base}.{a.name}" for a in node.names)}
    # a module importing its own package (or a package above it) goes through code already running
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_every_relative_import_names_a_module_that_exists():
    """Regression: moving modules into playbooks/ and jobs/ left function-level `from .infer ...` imports
    that only fail when the function runs."""
    mods = modules()
    missing = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                if base not in mods:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {base}")
                elif node.module is None:  # from . import x: x is a module, or a name the package defines
                    defined = package_names(mods[base])
                    missing += [
                        f"{path.relative_to(ROOT)}:{node.lineno}: {base}.{a.name}"
                        for a in node.names
                        if f"{base}.{a.name}" not in mods and a.name not in defined
                    ]
    assert missing == []


def package_names(path: Path) -> set[str]:
    """The names a module binds at its top level (assignments, imports, definitions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "kaggle_kit" and layer(m) is None] == []


def test_layers_import_one_way():
    upward = [
        f"{m} -> {t}"
        for m, targets in graph().items()
        for t in targets
        if m != "kaggle_kit" and layer(t) is not None and layer(t) > layer(m)
    ]
    assert upward == []


def test_no_import_cycle():
    g = graph()
    seen, cycles = set(), []

    def visit(node, path):
        if node in path:
            cycles.append(path[path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        for nxt in sorted(g[node]):
            visit(nxt, path + [node])

    for start in sorted(g):
        visit(start, [])
    assert cycles == []


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_ALLOWED:
                    long_functions.append(f"{rel}:{node.name}: {n} lines")
    assert long_modules == []
    assert long_functions == []


def test_no_competition_is_named_outside_competitions():
    """Regression: `comp.name == "prompt_recovery"` in jobs, alpaca if-chains in training and config."""
    from kaggle_kit.competitions import COMPETITIONS

    names = "|".join(map(re.escape, COMPETITIONS))
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)|\.name\s*==""")
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if "competitions" in path.relative_to(PACKAGE).parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def test_one_yaml_reader_one_submission_reader_one_folder_replace():
    """Regression: three YAML readers with their own error handling, two submission readers that
    disagreed on a BOM, delete-then-rename folder swaps. io.py holds the one of each."""
    patterns = {
        "yaml file read": re.compile(r"yaml\.safe_load\([^)]*read_text"),
        "submission read": re.compile(r"pd\.read_csv\("),
        "folder delete then rename": re.compile(r"shutil\.rmtree\((\w+)\)[\s\S]{0,200}?\.rename\("),
    }
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "io.py":
            continue
        text = path.read_text()
        hits += [f"{path.relative_to(ROOT)}: {what}" for what, pat in patterns.items() if pat.search(text)]
    assert hits == []
