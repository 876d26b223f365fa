"""Security rules of the package source, checked by reading it with `ast`, and of the checkpoints the
stages write: weights in safetensors only (no pickle), no remote code, safe YAML, no shell.

The rules (README.md, "Security"): no `torch.load` without `weights_only=True`, no `pickle`, no
`trust_remote_code=True`, `yaml.safe_load` only, no `shell=True` / `os.system` / `os.popen` and no
`eval` / `exec`; stage folders hold `model.safetensors` and never `pytorch_model.bin`.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from llmpipe.core.errors import UserError

PACKAGE = Path(__file__).resolve().parent.parent / "llmpipe"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def violations(source: str, filename: str) -> list[str]:
    """Every breach of the rules in one module's source, as `file:line: what`."""
    found = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = {alias.name for alias in node.names}
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if "pickle" in names or "dill" in names or module in ("pickle", "dill"):
                bad(node, "imports pickle: weights and data must not be unpickled (use safetensors / JSON)")
            if module == "torch" and "load" in names:
                bad(node, "imports torch.load by name: call torch.load(..., weights_only=True) so that it can be checked")
            if module == "os" and names & {"system", "popen"}:
                bad(node, "imports os.system/os.popen: run commands with subprocess and a list of arguments")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load") and not _is_true(keywords.get("weights_only")):
            bad(node, "torch.load without weights_only=True unpickles arbitrary code; load safetensors instead")
        if _is_true(keywords.get("trust_remote_code")):
            bad(node, "trust_remote_code=True runs code from a model folder or the Hub")
        # yaml.compose builds only the node tree (line numbers for error messages), never Python objects; with the
        # SafeLoader its tags are resolved as safe_load resolves them.
        safe_compose = name in ("yaml.compose", "yaml.compose_all") and _dotted(keywords.get("Loader", ast.Name("?"))) == "yaml.SafeLoader"
        if name.startswith("yaml.") and name not in ("yaml.safe_load", "yaml.safe_dump", "yaml.dump", "yaml.safe_load_all") \
                and not safe_compose:
            bad(node, f"{name}: read YAML with yaml.safe_load only (other loaders build arbitrary objects)")
        if _is_true(keywords.get("shell")):
            bad(node, "shell=True: pass a list of arguments, no shell")
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            bad(node, f"{name} runs a shell: use subprocess.run with a list of arguments")
        if name in ("eval", "exec"):
            bad(node, f"{name}() runs strings as code")
    return found


def test_the_rules_catch_what_they_forbid():
    unsafe = """
import pickle
import yaml, torch, os, subprocess
from transformers import AutoModel
torch.load("x.bin")
torch.load("x.bin", weights_only=False)
AutoModel.from_pretrained("x", trust_remote_code=True)
yaml.load(open("r.yaml"), Loader=yaml.Loader)
subprocess.run("ls", shell=True)
os.system("ls")
os.popen("ls")
eval("1")
yaml.compose("a: 1", Loader=yaml.Loader)
"""
    lines = sorted(int(v.split(":")[1]) for v in violations(unsafe, "bad.py"))
    assert lines == [2, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    safe = ('import torch, yaml\ntorch.load("x", weights_only=True)\nyaml.safe_load("a: 1")\nmodel.eval()\n'
            'yaml.compose("a: 1", Loader=yaml.SafeLoader)\n')
    assert violations(safe, "good.py") == []


def test_package_source_follows_the_security_rules():
    assert SOURCES, PACKAGE
    found = [v for path in SOURCES for v in violations(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert not found, "security rules broken (see README.md, Security):\n" + "\n".join(found)


def test_stage_checkpoints_hold_safetensors_and_no_pickled_weights(micro_run: Path):
    for stage in ("pretrain", "sft", "dpo"):
        folder = micro_run / stage
        assert (folder / "model.safetensors").is_file(), f"{folder} has no model.safetensors"
        patterns = ("pytorch_model*.bin", "*.pt", "*.pkl")
        pickled = sorted(str(p.relative_to(micro_run)) for pattern in patterns for p in folder.rglob(pattern))
        assert not pickled, f"{stage} wrote pickled weights: {pickled}"


def test_a_folder_with_pickled_weights_only_is_refused(micro_run: Path, tmp_path: Path):
    # Loading it would go through torch.load; the checks refuse it before transformers sees it.
    from llmpipe.runs.integrity import check_model_folder

    folder = tmp_path / "sft"
    shutil.copytree(micro_run / "sft", folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="no model.safetensors"):
        check_model_folder(folder)
