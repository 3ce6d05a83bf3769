"""Dev tooling never ships: the wheel's packages leave devtools/ out, and nothing the wheel or the
images contain imports it (it exists only in a checkout)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "operator" / "sft_operator", ROOT / "trainer-image" / "sft_trainer"]


def test_the_wheel_lists_only_the_product_packages() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    assert sorted(packages) == ["sft_operator", "sft_operator.api", "sft_trainer", "sft_trainer.osft_entry",
                                "sft_trainer.transfer"]
    assert not (ROOT / "operator" / "sft_operator" / "dev").exists()


def test_every_shipped_package_is_in_the_wheel() -> None:
    # setuptools ships only the packages listed: a subpackage left out imports in a checkout and
    # fails in the images (sft_trainer.transfer did, at the image build's import check).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(tree.parent).parts)
             for tree in SHIPPED for init in tree.rglob("__init__.py")}
    assert found - listed == set()


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_shipped_module_imports_devtools() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for tree in SHIPPED
        for path in sorted(tree.rglob("*.py"))
        if any(name == "devtools" or name.startswith("devtools.") for name in imported_modules(path))
    ]
    assert offenders == []


def test_the_operator_image_makes_a_placeholder_of_every_listed_package() -> None:
    # The root Dockerfile installs the dependencies through empty placeholder packages: one
    # missing from that step fails setuptools (and the operator image build).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in config["packages"]:
        top, *rest = package.split(".")
        init = "/".join([config["package-dir"][top], *rest, "__init__.py"])
        assert init in dockerfile, init
