"""The package's declared layers, checked by parsing every module's imports (no import is executed).

Rules (docs/architecture.md): a module imports only its own layer or lower; no llmpipe import inside a
function except in the CLI (which keeps `llmpipe --help` fast); stage names appear as string literals
only in the stage registry; manifest fields are written only through the typed manifest.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from llmpipe.registry import STAGES

PACKAGE = Path(__file__).resolve().parent.parent / "llmpipe"
# Lowest first. A module's layer is the first prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("llmpipe.core", "llmpipe")),
    ("config", ("llmpipe.config", "llmpipe.registry")),
    ("runs", ("llmpipe.runs",)),
    ("data, models, chat format", ("llmpipe.data", "llmpipe.models", "llmpipe.loading", "llmpipe.chat_format", "llmpipe.sources")),
    ("eval", ("llmpipe.eval",)),
    ("speed", ("llmpipe.speed",)),
    ("train", ("llmpipe.train",)),
    ("stages", ("llmpipe.stages",)),
    ("pipeline", ("llmpipe.pipeline", "llmpipe.scale")),
    ("faces", ("llmpipe.cli", "llmpipe.cli_common", "llmpipe.report", "llmpipe.report_plots",
               "llmpipe.summary", "llmpipe.chat", "llmpipe.export", "llmpipe.export_gguf", "llmpipe.modelfile")),
]
LAZY_ALLOWED = ("llmpipe.cli",)
# Strings that equal a stage name but mean something else.
NOT_STAGE_NAMES = {
    ("llmpipe.config.constants", "sft"): "TRL's DPO loss type 'sft'",
    ("llmpipe.config.schema", "reward"): "the noun in 'unknown reward ...' messages",
    ("llmpipe.sources", "tokenizer"): "the GGUF metadata section 'tokenizer', not an architecture",
}


def layer_of(module: str) -> int:
    """The index of `module`'s layer in LAYERS (longest matching prefix wins)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no declared layer: add it to tests/test_layers.py LAYERS"
    return best


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def llmpipe_imports(tree: ast.AST) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported module, inside a function) for every import of an llmpipe module."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").split(".")[0] == "llmpipe":
                for alias in child.names:
                    # `from llmpipe.x import y` may name module y or a name in x: take the module if it is one.
                    full = f"{child.module}.{alias.name}"
                    out.append((child, full if full in MODULES else child.module, inside))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "llmpipe":
                        out.append((child, alias.name, inside))
            visit(child, inside)

    visit(tree, False)
    return out


MODULES = modules()


def violations(source_by_module: dict[str, str]) -> list[str]:
    """Every breach of the import rules in the given sources (module name -> source text)."""
    found = []
    for module, source in source_by_module.items():
        own = layer_of(module)
        for node, target, inside in llmpipe_imports(ast.parse(source)):
            where = f"{module}:{node.lineno}"
            if inside and module not in LAZY_ALLOWED:
                found.append(f"{where} imports {target} inside a function")
            if layer_of(target) > own:
                found.append(f"{where} imports {target} from a higher layer ({LAYERS[layer_of(target)][0]} > {LAYERS[own][0]})")
    return found


def test_every_module_imports_only_its_own_layer_or_lower():
    sources = {name: path.read_text(encoding="utf-8") for name, path in MODULES.items()}
    assert violations(sources) == []


def test_a_planted_upward_import_is_caught():
    planted = {"llmpipe.runs.folders": "from llmpipe.train.fit import fit\n",
               "llmpipe.data.io": "def f():\n    from llmpipe.core.files import sha256_file\n"}
    found = violations(planted)
    assert any("from a higher layer" in v and "llmpipe.runs.folders" in v for v in found), found
    assert any("inside a function" in v and "llmpipe.data.io" in v for v in found), found


def test_every_module_is_in_a_declared_layer():
    for name in MODULES:
        layer_of(name)


def test_stage_names_are_literals_only_in_the_registry():
    names = set(STAGES)
    found = []
    for module, path in MODULES.items():
        if module == "llmpipe.registry":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Keys of JSON records ({"tokenizer": sha256}) name fields, not stages.
        keys = {id(k) for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys if k is not None}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names and id(node) not in keys
                    and (module, node.value) not in NOT_STAGE_NAMES):
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert found == [], "stage names belong to llmpipe/registry.py:\n" + "\n".join(found)


def test_manifest_fields_are_written_only_through_the_typed_manifest():
    """No `manifest[...] = ...` or `.update(...)` on a manifest, and manifest.json written only by runs.manifest."""
    found = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    # Nested JSON values (manifest.metrics[...]) are free-form; the manifest itself is not.
                    if isinstance(target, ast.Subscript) and ast.unparse(target.value).lower().endswith("manifest"):
                        found.append(f"{module}:{node.lineno} {ast.unparse(target)}")
        if module != "llmpipe.runs.manifest" and "write_json_atomic(" in source and "MANIFEST" in source:
            found.append(f"{module}: writes manifest.json itself")
    assert found == [], found


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_registry_entry_has_a_train_function(name):
    spec = STAGES[name]
    module = importlib.import_module(spec.module)
    assert callable(getattr(module, "train", None)), f"{spec.module} has no train(ctx)"
    for parent in spec.parents:
        assert parent in STAGES
