"""The local node's entry point fails with one clear line, not a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def run_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "devtools.localnode", *args],
                          capture_output=True, text=True, timeout=60)


def test_missing_kubeconfig_is_one_clear_line(tmp_path):
    result = run_cli("--kubeconfig", str(tmp_path / "absent"), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"localnode: cannot load kubeconfig {tmp_path / 'absent'}:")
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop privileges")
def test_without_mount_namespaces_it_says_it_needs_root(tmp_path):
    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    result = run_cli("--kubeconfig", str(tmp_path / "k"), "--state-dir", str(tmp_path / "s"), prefix=nobody)
    assert result.returncode == 1
    assert result.stderr.startswith("localnode: mount namespaces are unavailable")
    assert "must run as root" in result.stderr
