"""Train with Hugging Face Accelerate: the file behind `accelerate launch vortex/train.py`.

    accelerate launch vortex/train.py --target-gpz 6 --output_dir runs/gpz6
    vortex train --target-gpz 6 --output_dir runs/gpz6          # the same program
    accelerate launch -m vortex train --target-gpz 6 ...        # the same, as a module

The loop itself is vortex/training/loop.py; `vortex train --help` lists every option.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not the modules beside this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vortex.cli.main import run_guarded  # noqa: E402
from vortex.training.loop import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_guarded(main))
