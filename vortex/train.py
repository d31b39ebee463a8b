"""Train with Hugging Face Accelerate: the file behind `accelerate launch vortex/train.py`, and its Python API.

    accelerate launch vortex/train.py --target-gpz 6 --output_dir runs/gpz6
    vortex train --target-gpz 6 --output_dir runs/gpz6          # the same program
    accelerate launch -m vortex train --target-gpz 6 ...        # the same, as a module

    from vortex.train import TrainConfig, train                 # the same, from Python
    result = train(TrainConfig(target_gpz=6, output_dir="runs/gpz6"))   # a TrainResult

The loop itself is vortex/training/loop.py; `vortex train --help` lists every option. Each is a field of
TrainConfig, defined once in one of its argument dataclasses (RunArguments, ModelArguments, DataArguments,
OptimArguments, TargetArguments) and parsed by `transformers.HfArgumentParser` with the HF example scripts'
names (older vortex names as aliases); the YAML recipe gives the defaults, the command line wins.
`vortex train settings.yaml` (or .json) reads the settings from one file, as the HF scripts do.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not the modules beside this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vortex.cli.main import run_guarded  # noqa: E402
from vortex.training.config import DataArguments, ModelArguments, OptimArguments  # noqa: E402
from vortex.training.loop import (  # noqa: E402
    TARGET_MISSED,
    RunArguments,
    TargetArguments,
    TrainConfig,
    TrainResult,
    main,
    parse_config,
    train,
)

__all__ = [
    "TARGET_MISSED",
    "DataArguments",
    "ModelArguments",
    "OptimArguments",
    "RunArguments",
    "TargetArguments",
    "TrainConfig",
    "TrainResult",
    "parse_config",
    "train",
]

if __name__ == "__main__":
    sys.exit(run_guarded(main))
