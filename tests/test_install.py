"""The package as a user gets it: an sdist and a wheel that carry the embedded data and the recipes, and a
wheel that, installed into a fresh virtual environment, runs the micro chain by name from an empty folder.

The fresh environment reuses the dependencies of the Python running the tests (a .pth file names its
site-packages) and installs the wheel alone, without the package index: no network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
SOURCES = ("llmpipe", "data", "recipes", "pyproject.toml", "README.md")
STAGES = ("tokenizer", "pretrain", "sft", "dpo")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_pyproject_lists_every_package_folder():
    # The package list is written out (the mapped data folders rule out `find`): a new subpackage must be added.
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "llmpipe").rglob("*.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"llmpipe._data": "data", "llmpipe._recipes": "recipes"}


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Path:
    """The sdist and wheel, built once per session from a clean copy of the sources (no stale build/)."""
    work = tmp_path_factory.mktemp("dist")
    source = work / "src"
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    out = work / "out"
    if importlib.util.find_spec("build") is not None:
        # --no-isolation: the build backend (setuptools) of this environment, no download; the wheel is
        # built from the sdist, so a file the sdist misses is missing from the wheel too.
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)], cwd=work)
    else:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
             cwd=work)
    return out


def test_the_wheel_and_sdist_carry_the_code_data_and_recipes(dist: Path):
    wheels = list(dist.glob(f"llmpipe-{VERSION}-py3-none-any.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    expected = {f"llmpipe/{p.relative_to(ROOT / 'llmpipe').as_posix()}" for p in (ROOT / "llmpipe").rglob("*.py")}
    expected |= {f"llmpipe/_data/{p.relative_to(ROOT / 'data').as_posix()}" for p in (ROOT / "data").rglob("*") if p.is_file()}
    expected |= {f"llmpipe/_recipes/{p.relative_to(ROOT / 'recipes').as_posix()}" for p in (ROOT / "recipes").rglob("*")
                 if p.is_file()}
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    assert f"llmpipe-{VERSION}.dist-info/entry_points.txt" in names
    sdists = list(dist.glob(f"llmpipe-{VERSION}.tar.gz"))
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed: the wheel was built by pip, without an sdist")
    with tarfile.open(sdists[0]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    needed = {p.relative_to(ROOT).as_posix() for folder in ("data", "recipes") for p in (ROOT / folder).rglob("*") if p.is_file()}
    assert not needed - members, f"missing from the sdist: {sorted(needed - members)}"


@pytest.fixture(scope="session")
def installed(dist: Path, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip()
    # The dependencies (and pip) of the environment running the tests, after the fresh one's own
    # site-packages: the installed wheel comes first. Paths only, so the editable install that environment
    # may hold (a .pth hook of its own) is not loaded.
    reused = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    Path(purelib, "reuse-test-env.pth").write_text("".join(p + "\n" for p in reused), encoding="utf-8")
    wheel = next(dist.glob("llmpipe-*.whl"))
    # --ignore-installed: never touch an llmpipe the reused environment holds.
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], cwd=venv, env=_clean_env())
    return venv / "bin"


def _clean_env() -> dict[str, str]:
    # Without PYTHONPATH, which may put a source checkout ahead of the installed wheel.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_installed_wheel_runs_micro_by_name_from_an_empty_folder(installed: Path, tmp_path: Path):
    env = _clean_env()
    where = _run([str(installed / "python"), "-c", "import llmpipe; print(llmpipe.__file__)"], cwd=tmp_path, env=env).stdout
    assert where.startswith(str(installed.parent)), f"llmpipe imported from {where}, not from the installed wheel"
    llmpipe = str(installed / "llmpipe")
    assert _run([llmpipe, "--version"], cwd=tmp_path, env=env).stdout.strip() == f"llmpipe {VERSION}"
    listed = _run([llmpipe, "recipes"], cwd=tmp_path, env=env).stdout
    assert {line.split()[0] for line in listed.splitlines()} == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}

    result = _run([llmpipe, "run", "micro", "--out", "runs/m"], cwd=tmp_path, env=env)

    assert "report:" in result.stdout, result.stdout
    for stage in STAGES:
        manifest = json.loads((tmp_path / "runs" / "m" / stage / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["status"] == "complete", stage
    pretrain = json.loads((tmp_path / "runs" / "m" / "pretrain" / "manifest.json").read_text(encoding="utf-8"))
    files = [f["path"] for source in pretrain["data"]["sources"] for f in source.get("files", [])]
    packaged = str(installed.parent)
    assert files and all(f.startswith(packaged) and "/llmpipe/_data/" in f for f in files), files
    # The recorded settings name the embedded data as in the repository, so a finished stage is the same
    # stage wherever llmpipe is installed.
    assert pretrain["config"]["pretrain"]["train_files"] == ["data/pretrain.train.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"], "the run wrote outside its run folder"
