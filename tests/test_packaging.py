"""pyproject.toml lists its packages by hand (pipelines/ and training/ install under latentdiff), so a new
subpackage that is not added there works in an editable install and is missing from a wheel. This test catches it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {"latentdiff"} | {
        "latentdiff." + init.parent.relative_to(ROOT / "latentdiff").as_posix().replace("/", ".")
        for init in (ROOT / "latentdiff").glob("*/**/__init__.py")
    }
    on_disk |= {name for name, folder in config["package-dir"].items() if (ROOT / folder / "__init__.py").is_file()}
    missing = sorted(on_disk - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
