"""One interface for inversion attacks: `fit` on what the attacker has, then `invert` z.

    attack = get_attack("decoder")(config)
    attack.fit(edge, aux)          # aux: (z, x) pairs of the attacker's own images, or None
    images = attack.invert(z)      # [N, C, H, W] in [0, 1]

An attack that trains in epochs of minibatch steps (the decoder attacks) can also hand its
training over as a `Training` (`fit_stepwise`): a sweep then trains the attacks of all its splits
together (`train_together`), one pass over the auxiliary data per epoch with every split's step
taken in turn, instead of one split after the other.

Built-in attacks register themselves by name (`decoder`, `enhanced`, `optimize`). A user's
attack is a subclass named on the command line as `package.module:Class`
(`vortex attack --attack mypkg.attacks:MyAttack`): code vortex imports because the user named it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from vortex.errors import AttackError


@dataclass
class AttackConfig:
    """What attack to run and its budget; `seed` makes a run repeatable. Shared by every attack."""

    attack: str = "decoder"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    patience: int = 5
    width: int = 32
    val_fraction: float = 0.1
    steps: int = 300
    tv_weight: float = 0.01
    opt_lr: float = 0.05
    seed: int = 0
    grid_images: int = 8
    feature_memory: int | None = None  # bytes of z kept at once; None: half the free memory
    progress: bool = True
    device: str = "cpu"
    clusters: int | None = None  # decoder attacks: centre z on this many clusters (None: the model's class count)

    def __post_init__(self) -> None:
        for flag, value in (("--epochs", self.epochs), ("--patience", self.patience), ("--steps", self.steps)):
            if value < 1:
                raise AttackError(f"{flag} must be at least 1, got {value}")
        if self.tv_weight < 0:
            raise AttackError(f"--tv-weight must be 0 or more, got {self.tv_weight}")
        if self.batch_size < 2:
            raise AttackError(f"--batch-size must be at least 2 (decoders use batch norm), got {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise AttackError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")


@dataclass
class AuxPairs:
    """The attacker's own images and their z at one split: a training part and a held-out part."""

    z_train: torch.Tensor
    x_train: torch.Tensor
    z_val: torch.Tensor
    x_val: torch.Tensor


class Attack(ABC):
    """An inversion attack at one split. Subclasses set `name` and implement `fit` and `invert`."""

    name: ClassVar[str]
    needs_aux: ClassVar[bool] = True  # black box: learns from auxiliary images; else white box

    def __init__(self, config: AttackConfig, image_shape: tuple[int, ...], *, seed: int = 0, desc: str = "attack"):
        self.config, self.image_shape, self.seed, self.desc = config, tuple(image_shape), seed, desc
        self.epochs_run: int | None = None
        self.val_mse: float | None = None

    @abstractmethod
    def fit(self, edge: nn.Module, aux: AuxPairs | None) -> None:
        """Learn what the attack needs: from the edge (white box) or from aux pairs (black box)."""

    @abstractmethod
    def invert(self, z: torch.Tensor) -> torch.Tensor:
        """Images rebuilt from z, on the CPU, in [0, 1]."""

    def fit_stepwise(self, edge: nn.Module, aux: AuxPairs | None) -> Training | None:
        """Do what `fit` does before training and return the training, for `train_together` to run
        with other splits'; the attack is fitted once it has run. None (the default): this attack
        is fitted in one go by `fit`. A subclass that overrides `fit` overrides this too."""
        return None


class Training(ABC):
    """An attack's training in epochs of minibatch steps, run by `train_together`. `seconds`: the
    compute it has taken so far (its steps and end-of-epoch work)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @abstractmethod
    def begin_epoch(self) -> int:
        """Start the next epoch (shuffle); its number of steps."""

    @abstractmethod
    def step(self, i: int) -> None:
        """Minibatch step `i` of the epoch."""

    @abstractmethod
    def end_epoch(self) -> bool:
        """Finish the epoch (held-out check, learning-rate schedule); True when training is over
        (then the attack holds its result)."""

    def postfix(self) -> dict[str, Any]:
        """What a progress bar shows of this training alone."""
        return {}


def _timed(training: Training, method: Any, *args: Any) -> Any:
    start = time.perf_counter()
    try:
        return method(*args)
    finally:
        training.seconds += time.perf_counter() - start


def train_together(trainings: Sequence[Training], *, desc: str = "training", progress: bool = True) -> None:
    """Run `trainings` to their end in lock step: each epoch every unfinished one takes its step
    i in turn, for i over the epoch, so the attacks of all splits share one pass over the
    auxiliary data. Each keeps its own model, optimiser and random state, so what it learns does
    not depend on which others run beside it."""
    active = list(trainings)
    bar = tqdm(desc=desc, unit="epoch", leave=False, disable=not progress)
    while active:
        steps = [_timed(t, t.begin_epoch) for t in active]
        for i in range(max(steps)):
            for t, n in zip(active, steps):
                if i < n:
                    _timed(t, t.step, i)
        active = [t for t in active if not _timed(t, t.end_epoch)]
        bar.update()
        bar.set_postfix(trainings[0].postfix() if len(trainings) == 1 else {"training": len(active)})
    bar.close()


REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack available by its `name`."""
    REGISTRY[cls.name] = cls
    return cls
