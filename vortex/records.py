"""Typed records of what vortex measures and writes.

- `Profile` (profile.json, and `profile` in vortex.json): one `SplitStats` per split and the a-priori `Gpz`;
- `AttackReport` (attack.json): one `AttackResult` per attacked split, the `PredictedGpz` and the `PosthocGpz`;
- `ControllerEntry` and `BestPoint` (`controller` in vortex.json): the controller's measurements.

`to_dict()` gives a file's keys and `from_dict()` reads them back, checking what it reads. The
top-level records carry `schema_version`; a file without it (written before it was recorded) reads
as version 1, a file of a newer version is refused with a one-line message.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, TypeVar

from vortex.errors import VortexError

SCHEMA_VERSION = 1


R = TypeVar("R", bound="Record")


class RecordError(VortexError):
    """A profile, attack or controller record that does not have the fields vortex wrote."""


def optional(default: Any = None) -> Any:
    """A field left out of the file while it holds None."""
    return field(default=default, metadata={"omit_none": True})


class Record:
    """A dataclass with a dict round trip (nested records, lists of records, optional fields)."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = to_plain(value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise RecordError(f"a {cls.__name__} record must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", 1)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise RecordError(
                f"this {cls.__name__} was written with schema version {version}; this vortex reads up to "
                f"{SCHEMA_VERSION}: upgrade vortex"
            )
        hints = _hints(cls)
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        missing = [f.name for f in _required(cls) if f.name not in data]
        if missing:
            raise RecordError(f"a {cls.__name__} record lacks {', '.join(missing)}")
        try:
            return cls(**{k: _build(hints[k], v, k) for k, v in data.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise RecordError(f"a {cls.__name__} record is malformed: {exc}") from None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(cls: type) -> list:
    return [f for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


def to_plain(value: Any) -> Any:
    """`value` with every record in it turned into its dict: what JSON gives back after writing it."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def _build(tp: Any, value: Any, name: str) -> Any:
    """`value` read from JSON as type `tp`: records are built, plain values are type-checked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _build(option, value, name)
            except RecordError as exc:
                errors.append(str(exc))
        raise RecordError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"'{name}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, name) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"'{name}' must be an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: _build(item, v, name) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return value  # JSON writes 1.0 as 1.0 and 1 as 1: keep what was read, so a round trip is exact
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise RecordError(f"'{name}' must be {tp.__name__}, got {value!r}")
    return value


@dataclass(kw_only=True)
class SplitStats(Record):
    """One split of a profile: where it cuts, what it sends, and its class statistics."""

    index: int
    name: str
    shape: list[int]
    dim: int
    bytes: int  # float32 payload of one sample's z
    edge_params: int
    rc2: float  # mean intra-class radius R_c^2
    rc2_per_class: list[float | None]  # None for a class with fewer than 2 samples
    global_var: float
    rho: float  # rc2 / global_var, scale-free
    sketch_dim: int | None  # count-sketch width when the split was sketched, else None (exact)
    h_bound_feature: float
    h_bound_decision: float
    h_bound_per_dim: float
    decisive: str  # which entropy bound is smaller: "feature" or "decision"


@dataclass(kw_only=True)
class Gpz(Record):
    """The a-priori Golden Partition Zone: the split after the largest relative drop of a curve."""

    index: int
    zone: list[int]
    criterion: str
    quantity: str  # "rho" or "rc2"
    drops: list[float]  # relative drop into splits 2..L
    by_quantity: dict[str, int] | None = optional()  # the index each quantity gives (profiles only)


@dataclass(kw_only=True)
class Profile(Record):
    """profile.json: every split's statistics and the a-priori GPZ."""

    schema_version: int = SCHEMA_VERSION
    vortex_version: str
    model: str
    dataset: str
    num_samples: int
    num_classes: int
    labels: str  # grouping: "true" or "predicted"
    accuracy: float
    class_counts: list[int]
    small_classes: dict[str, int]  # classes with fewer than 2 samples, by label
    splits: list[SplitStats]
    gpz: Gpz

    def rho(self) -> list[float]:
        return [s.rho for s in self.splits]


@dataclass(kw_only=True)
class AttackResult(Record):
    """One attacked split of attack.json: mean reconstruction metrics on the private images."""

    index: int
    name: str
    mse: float
    psnr: float
    ssim: float
    cosine: float
    num_images: int
    shape: list[int]
    seconds: float  # on this split alone: preparing its attack, its share of the training, inverting, scoring
    compute_seconds: float | None = optional()  # of which its model: training steps, held-out checks, inversion
    epochs_run: int | None = optional()  # learned attacks
    aux_val_mse: float | None = optional()
    rho: float | None = optional()  # the profile's rho at this split, when there is one


@dataclass(kw_only=True)
class PredictedGpz(Record):
    """The a-priori GPZ an attack report is compared with (index None: no profile)."""

    index: int | None
    zone: list[int] | None = optional()
    quantity: str | None = optional()
    source: str | None = optional()  # where the profile came from


@dataclass(kw_only=True)
class PosthocGpz(Record):
    """The split after the largest rise of attack MSE; index None says why in `reason`."""

    index: int | None
    interval: list[int] | None = optional()  # [previous attacked split + 1, index]
    rises: list[float] | None = optional()
    reason: str | None = optional()


@dataclass(kw_only=True)
class AttackReport(Record):
    """attack.json: per-split attack results and the a-priori vs post-hoc GPZ."""

    schema_version: int = SCHEMA_VERSION
    vortex_version: str
    model: str
    dataset: str
    aux_dataset: str | None
    attack: str
    aux_source: str | None = optional()
    settings: dict[str, Any] | None = optional()
    processes: int | None = optional()
    seconds: float | None = optional()
    splits: list[AttackResult]
    gpz_predicted: PredictedGpz
    gpz_posthoc: PosthocGpz
    agreement: bool | None  # the predicted zone meets the post-hoc rise (None: nothing to compare)

    def mse(self) -> dict[int, float]:
        return {s.index: s.mse for s in self.splits}


@dataclass(kw_only=True)
class ControllerEntry(Record):
    """One controller measurement during `--target-gpz` training and the decision it took."""

    step: int
    progress: float  # share of training done
    gpz: int
    zone: list[int]
    ratio: float  # drop at K over the largest other drop
    rho_on_target: bool
    attack_mse: float | None  # the online attack's MSE at K (None without a signal)
    protected: bool | None
    reached: bool
    accuracy: float
    rho: list[float]
    drops: list[float]
    levers: dict[str, float]
    decision: str


@dataclass(kw_only=True)
class BestPoint(Record):
    """The measurement whose weights are kept: closest to K, then hardest to invert, then clearest."""

    key: list[float]
    step: int
    gpz: int
    ratio: float
    attack_mse: float | None
    accuracy: float


@dataclass(kw_only=True)
class ControllerSummary(Record):
    """What vortex.json records under `controller`: the target, settings, final levers and history."""

    target_gpz: int
    config: dict[str, Any]
    levers: dict[str, float]
    baseline_accuracy: float | None
    max_accuracy_drop: float | None
    min_mse: float | None
    best: BestPoint | None
    history: list[ControllerEntry]
