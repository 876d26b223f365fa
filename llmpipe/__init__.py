"""llmpipe: a language model from raw text to an aligned chat model, in chained stages."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """The installed package's version; pyproject.toml is its one source (metadata is built from it)."""
    try:
        return version("llmpipe")
    except PackageNotFoundError:
        # A source checkout on sys.path without an install: read the version where the metadata would.
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


__version__ = _version()
