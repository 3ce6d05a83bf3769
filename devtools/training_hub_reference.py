"""training-hub's ``sft()`` and ``osft()`` signatures, read from its wheel with ``ast`` (nothing
imported, no CUDA).

Our ``sft_client.api.sft`` and ``osft`` take training_hub's parameters in training_hub's order.
The references are small JSONs committed next to the unit tests (tests/unit/training_hub_signatures.json,
tests/unit/training_hub_osft_signatures.json), written by this module from the wheel, so the
comparison runs offline everywhere; a second test reads the wheel again (when pip can fetch it)
and checks that the JSON is still what the wheel says.

    python -m devtools.training_hub_reference [--wheel PATH]   # rewrites both JSONs

Without --wheel, the wheel is fetched with ``pip download --no-deps`` into WHEEL_CACHE.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

DISTRIBUTION = "training-hub"
VERSION = "0.11.2"
WHEEL_NAME = f"training_hub-{VERSION}-py3-none-any.whl"
SOURCE = "training_hub/algorithms/sft.py"
# The functions we mirror: module-level sft() and SFTAlgorithm.train.
FUNCTIONS = ("sft", "SFTAlgorithm.train")
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "unit" / "training_hub_signatures.json"
# osft(): the same reading of its own module.
OSFT_SOURCE = "training_hub/algorithms/osft.py"
OSFT_FUNCTIONS = ("osft", "OSFTAlgorithm.train")
OSFT_REFERENCE = ROOT / "tests" / "unit" / "training_hub_osft_signatures.json"
WHEEL_CACHE = Path.home() / ".cache" / "sft-operator" / "wheels"


def _parameters(function: ast.FunctionDef) -> list[dict[str, Any]]:
    """Each parameter: name, kind (as inspect.Parameter spells it) and default (source text or None)."""
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    found: list[dict[str, Any]] = []
    for arg, default in zip(positional, defaults):
        kind = "POSITIONAL_ONLY" if arg in args.posonlyargs else "POSITIONAL_OR_KEYWORD"
        found.append({"name": arg.arg, "kind": kind, "default": None if default is None else ast.unparse(default)})
    if args.vararg is not None:
        found.append({"name": args.vararg.arg, "kind": "VAR_POSITIONAL", "default": None})
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        text = None if default is None else ast.unparse(default)
        found.append({"name": arg.arg, "kind": "KEYWORD_ONLY", "default": text})
    if args.kwarg is not None:
        found.append({"name": args.kwarg.arg, "kind": "VAR_KEYWORD", "default": None})
    return found


def signatures_from_source(
    source: str, functions: tuple[str, ...] = FUNCTIONS, source_name: str = SOURCE
) -> dict[str, list[dict[str, Any]]]:
    """The parameters of ``functions`` (module level or ``Class.method``) in a module's source."""
    FUNCTIONS = functions  # noqa: N806 - the body below reads the module's name
    SOURCE = source_name  # noqa: N806
    tree = ast.parse(source)
    found: dict[str, list[dict[str, Any]]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in FUNCTIONS:
            found[node.name] = _parameters(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                qualified = f"{node.name}.{item.name}" if isinstance(item, ast.FunctionDef) else None
                if qualified in FUNCTIONS:
                    found[qualified] = _parameters(item)  # type: ignore[arg-type]  # a FunctionDef: qualified is set
    missing = [name for name in FUNCTIONS if name not in found]
    if missing:
        raise ValueError(f"{SOURCE} defines no {', '.join(missing)}")
    return {name: found[name] for name in FUNCTIONS}


def reference_from_wheel(
    wheel: Path, source_name: str = SOURCE, functions: tuple[str, ...] = FUNCTIONS
) -> dict[str, Any]:
    """The reference document for ``wheel``: which file it came from (sha256) and the signatures."""
    data = wheel.read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(source_name).decode()
    return {
        "distribution": DISTRIBUTION,
        "version": VERSION,
        "wheel": wheel.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": source_name,
        "signatures": signatures_from_source(source, functions, source_name),
    }


def download_wheel(directory: Path = WHEEL_CACHE, timeout: float = 180) -> Path:
    """The wheel in ``directory``, fetched with pip (no dependencies) if it is not there yet."""
    wheel = directory / WHEEL_NAME
    if not wheel.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                f"{DISTRIBUTION}=={VERSION}",
                "-d",
                str(directory),
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    return wheel


# What training_hub's import needs besides torch and instructlab-training (the `trainer` extra):
# its wheel and the pure-Python packages its import reaches, installed --no-deps into a cache
# directory, never into the environment. No CUDA library is needed for the import.
IMPORT_REQUIREMENTS = (
    f"{DISTRIBUTION}=={VERSION}",
    "rhai-innovation-mini-trainer==0.9.0",
    "deprecated==1.3.1",
    "wrapt==2.5.2",
)
IMPORT_TARGET = WHEEL_CACHE.parent / f"training-hub-{VERSION}-import"


def install_for_import(target: Path = IMPORT_TARGET, timeout: float = 300) -> Path:
    """``target`` holding training_hub and what its import needs (put it on PYTHONPATH); installed
    once, again when the pins change (its marker lists them). Raises CalledProcessError,
    TimeoutExpired or OSError when pip cannot install them."""
    import subprocess
    import sys

    marker = target / ".complete"
    wanted = "\n".join(IMPORT_REQUIREMENTS) + "\n"
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--only-binary=:all:",
                "--upgrade",
                "--target",
                str(target),
                *IMPORT_REQUIREMENTS,
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        marker.write_text(wanted)
    return target


def dump(reference: dict[str, Any]) -> str:
    """The reference as JSON, one parameter a line (a diff shows a parameter added or moved)."""
    head = {key: value for key, value in reference.items() if key != "signatures"}
    lines = ["{", *(f" {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()), ' "signatures": {']
    for index, (name, params) in enumerate(reference["signatures"].items()):
        lines.append(f"  {json.dumps(name)}: [")
        lines.extend(f"   {json.dumps(param)}{',' if i < len(params) - 1 else ''}" for i, param in enumerate(params))
        lines.append("  ]," if index < len(reference["signatures"]) - 1 else "  ]")
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"{WHEEL_NAME} (default: pip download into {WHEEL_CACHE})")
    parser.add_argument("--output", type=Path, default=REFERENCE)
    parser.add_argument("--osft-output", type=Path, default=OSFT_REFERENCE)
    args = parser.parse_args(argv)
    wheel = args.wheel or download_wheel()
    args.output.write_text(dump(reference_from_wheel(wheel)))
    args.osft_output.write_text(dump(reference_from_wheel(wheel, OSFT_SOURCE, OSFT_FUNCTIONS)))
    print(f"wrote {args.output} and {args.osft_output} from {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
