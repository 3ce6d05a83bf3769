"""Building one of our distributions' wheels offline, as an image build does (no build isolation)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(folder: Path, out: Path) -> Path:
    """The wheel pip builds from a copy of ``folder`` (setuptools writes build/ next to the sources:
    never into the checkout, where parallel tests would share it)."""
    source = out / f"src-{folder.name}"
    if folder == ROOT:  # the root project ships no package: its metadata is all it reads
        source.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
    else:
        shutil.copytree(folder, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    before = set((out / "dist").glob("*.whl"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = subprocess.run([*command, "-w", str(out / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = set((out / "dist").glob("*.whl")) - before
    return wheel
