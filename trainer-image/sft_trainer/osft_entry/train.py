"""torchrun's worker entry for OSFT: mini-trainer's ``train.py`` with our import-time patches.

mini-trainer's ``run_training`` starts ``torchrun <dir of api_train.py>/train.py``; the launcher
points that directory here (osft_launch.launcher_side), so each worker runs this file with
mini-trainer's command line, in GPU and CPU mode alike (the exact-resume fix is needed in both).
"""

import os
import sys

# Run as a script, this file's directory is sys.path[0]: nothing here may shadow a top-level module.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _here]

from sft_trainer import osft_worker  # noqa: E402

if __name__ == "__main__":
    osft_worker.main()
