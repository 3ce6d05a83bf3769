"""torchrun's worker entry in CPU mode: patch the CUDA-only calls, then run main_ds as __main__.

torchrun runs this file by path with main_ds's command line. Only CPU mode points torchrun here
(see cpu_mode.launcher_side); GPU runs execute instructlab-training's main_ds.py directly.
"""

import os
import sys

# Run as a script, this file's directory is sys.path[0]; our module names must not shadow
# top-level packages inside the worker.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _here]

import runpy  # noqa: E402

from sft_trainer import cpu_mode  # noqa: E402

if __name__ == "__main__":
    cpu_mode.apply_worker_side()
    runpy.run_module("instructlab.training.main_ds", run_name="__main__", alter_sys=True)
