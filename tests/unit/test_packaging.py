"""Packages by role: each distribution's wheel holds exactly its role's packages, each role imports
only what it may (the core nothing of ours; the launcher only the core; the operator and the
client never each other), and dev tooling (devtools/) never ships."""

from __future__ import annotations

import ast
import tomllib
import zipfile
from pathlib import Path

import pytest
from wheels import build_wheel

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"

# Distribution folder -> (distribution name, the top-level packages its wheel holds).
DISTRIBUTIONS = {
    "core": ("sft-operator-core", {"sft_core", "sft_models"}),
    "operator": ("sft-operator-controller", {"sft_operator", "sft_reporter"}),
    "client": ("sft-operator-client", {"sft_client"}),
    "trainer-image": ("sft-trainer", {"sft_trainer"}),
}
OURS = {"sft_core", "sft_models", "sft_operator", "sft_reporter", "sft_client", "sft_trainer", "devtools"}
# What each package may import of ours (besides itself).
MAY_IMPORT = {
    "sft_core": set(),
    "sft_models": {"sft_core"},
    "sft_operator": {"sft_core", "sft_models"},
    "sft_reporter": {"sft_core", "sft_operator"},  # the operator's bounded API client; same image
    "sft_client": {"sft_core", "sft_models"},
    "sft_trainer": {"sft_core"},
}


def project(folder: str) -> dict:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())


def package_dirs(folder: str) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in (ROOT / folder).glob("*/__init__.py")}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def our_imports(package: Path) -> dict[str, set[str]]:
    """{module path: the packages of ours it imports, other than its own}."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        tops = {name.split(".")[0] for name in imported_modules(path)} & OURS - {package.name}
        if tops:
            found[str(path.relative_to(ROOT))] = tops
    return found


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_each_distribution_lists_exactly_its_packages_at_one_version(folder: str) -> None:
    name, tops = DISTRIBUTIONS[folder]
    config = project(folder)
    assert config["project"]["name"] == name
    assert config["project"]["version"] == VERSION
    listed = set(config["tool"]["setuptools"]["packages"])
    assert {p.split(".")[0] for p in listed} == tops
    # setuptools ships only the packages listed: a subpackage left out imports in a checkout and
    # fails in the images (sft_trainer.transfer did, at the image build's import check).
    found = {
        ".".join(init.parent.relative_to(ROOT / folder).parts)
        for top in tops
        for init in (ROOT / folder / top).rglob("__init__.py")
    }
    assert found - listed == set()
    assert all((ROOT / folder / Path(*p.split("."))).is_dir() for p in listed)
    assert set(package_dirs(folder)) == tops
    # Every other role's distribution is required at the same version.
    ours = [r for r in config["project"]["dependencies"] if r.startswith("sft-")]
    assert all(r.endswith(f"=={VERSION}") for r in ours), ours


def test_the_root_distribution_ships_nothing_and_offers_each_role_as_an_extra() -> None:
    config = project(".")
    assert config["project"]["name"] == "sft-operator"
    assert config["tool"]["setuptools"]["packages"] == []
    extras = config["project"]["optional-dependencies"]
    assert extras["client"] == [f"sft-operator-client=={VERSION}"]
    assert extras["operator"] == [f"sft-operator-controller=={VERSION}"]
    assert extras["trainer"] == [f"sft-trainer=={VERSION}"]


def test_the_client_and_the_core_need_no_kopf_and_no_torch() -> None:
    for folder in ("core", "client"):
        deps = " ".join(project(folder)["project"]["dependencies"]).lower()
        assert "kopf" not in deps and "torch" not in deps, folder
    assert "kopf" not in " ".join(project("trainer-image")["project"]["dependencies"])


def test_every_module_imports_only_what_its_role_may() -> None:
    offenders = {}
    for folder in DISTRIBUTIONS:
        for name, package in package_dirs(folder).items():
            for module, tops in our_imports(package).items():
                if tops - MAY_IMPORT[name]:
                    offenders[module] = sorted(tops - MAY_IMPORT[name])
    assert offenders == {}


def test_the_import_rules_catch_an_offender(tmp_path: Path) -> None:
    # The check above is only worth something if it sees imports in every form.
    module = tmp_path / "sft_trainer" / "bad.py"
    module.parent.mkdir()
    module.write_text(
        "import sft_client.api\nfrom sft_operator import render\nif True:\n    from devtools import crd\n"
    )
    assert {n.split(".")[0] for n in imported_modules(module)} == {"sft_client", "sft_operator", "devtools"}


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_each_wheel_holds_its_roles_packages_and_nothing_else(folder: str, tmp_path: Path) -> None:
    name, tops = DISTRIBUTIONS[folder]
    wheel = build_wheel(ROOT / folder, tmp_path)
    assert wheel.name.startswith(f"{name.replace('-', '_')}-{VERSION}-")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert shipped == tops
    sources = {
        str(p.relative_to(ROOT / folder))
        for top in tops
        for p in (ROOT / folder / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {n for n in names if not n.split("/")[0].endswith(".dist-info")} == sources


def test_the_root_wheel_holds_no_package(tmp_path: Path) -> None:
    names = zipfile.ZipFile(build_wheel(ROOT, tmp_path)).namelist()
    assert [n for n in names if not n.split("/")[0].endswith(".dist-info")] == []


def test_no_shipped_module_imports_devtools() -> None:
    offenders = [
        module
        for folder in DISTRIBUTIONS
        for package in package_dirs(folder).values()
        for module, tops in our_imports(package).items()
        if "devtools" in tops
    ]
    assert offenders == []


def test_the_operator_image_makes_a_placeholder_of_every_listed_package() -> None:
    # The root Dockerfile installs the dependencies through empty placeholder packages: one
    # missing from that step fails setuptools (and the operator image build).
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("core", "operator"):
        for package in project(folder)["tool"]["setuptools"]["packages"]:
            init = "/".join([folder, *package.split("."), "__init__.py"])
            assert init in dockerfile, init
