"""One-pass profile: numbers against numpy, two processes against one, bad input."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vortex.core import stats
from vortex.core.probe import profile_model
from vortex.core.splits import SplitModel
from vortex.data import load_data
from vortex.errors import ProfileError
from vortex.models import ModelSpec, build_model, split_model
from vortex.records import Profile

sys.path.insert(0, str(Path(__file__).parent))
from probe_worker import seeded_profile  # noqa: E402
from reference import numpy_reference  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_profile_matches_numpy_on_captured_features(digits):
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8)
    sm = split_model(build_model(spec), spec)
    ds = digits["test"]
    profile = profile_model(sm, ds, model_name="cnn", dataset_name="digits", batch_size=50, progress=False)
    x = torch.tensor(np.asarray(ds.with_format("numpy")["pixels"]), dtype=torch.float32) / 255
    y = np.asarray(ds["label"])
    sm.model.eval()
    with torch.no_grad():
        _, zs = sm.forward_all(x)
    assert profile.num_samples == len(ds) and len(profile.splits) == sm.num_splits
    rho = []
    for split, z in zip(profile.splits, zs):
        ref = numpy_reference(z.numpy(), y, 10)
        for key in ("rc2", "global_var", "rho"):
            assert getattr(split, key) == pytest.approx(ref[key], rel=1e-5), (split.name, key)
        np.testing.assert_allclose(split.rc2_per_class, ref["rc2_per_class"], rtol=1e-5)
        rho.append(ref["rho"])
    drops = [(a - b) / a for a, b in zip(rho[:-1], rho[1:])]
    assert profile.gpz.index == 2 + int(np.argmax(drops))  # the split after the largest drop of numpy's rho


def test_sketch_bounds_wide_splits_and_keeps_their_rho(digits):
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8)
    sm = split_model(build_model(spec), spec)
    kw = dict(model_name="cnn", dataset_name="digits", progress=False)
    exact = profile_model(sm, digits["test"], **kw)
    sketched = profile_model(sm, digits["test"], sketch_dim=512, **kw)
    for e, s in zip(exact.splits, sketched.splits):
        if e.dim > 512:
            assert s.sketch_dim == 512
            assert s.rho == pytest.approx(e.rho, rel=0.1), e.name
        else:
            assert s.sketch_dim is None and s.rc2 == e.rc2
    assert any(s.sketch_dim for s in sketched.splits)


def test_default_sketches_only_what_the_budget_cannot_hold_and_exact_forces_exact(digits, monkeypatch):
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8)
    sm = split_model(build_model(spec), spec)
    kw = dict(model_name="cnn", dataset_name="digits", progress=False)
    exact = profile_model(sm, digits["test"], **kw)  # 10 classes x 4,618 dims: exact under the default budget
    assert all(s.sketch_dim is None for s in exact.splits)
    monkeypatch.setattr(stats, "STATS_BYTES", 200_000)  # exact would take 10 x 4,618 x 8 = 369,440 bytes
    auto = profile_model(sm, digits["test"], **kw)
    assert [s.sketch_dim for s in auto.splits] == [256 if e.dim > 256 else None for e in exact.splits]
    assert [s.rc2 for s in auto.splits if s.dim <= 256] == [e.rc2 for e in exact.splits if e.dim <= 256]
    forced = profile_model(sm, digits["test"], sketch_dim="exact", **kw)
    assert [s.rc2 for s in forced.splits] == [e.rc2 for e in exact.splits]


def test_predicted_labels_group_by_argmax(digits):
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_x = torch.tensor(np.asarray(digits["train"].with_format("numpy")["pixels"]), dtype=torch.float32) / 255
    train_y = torch.tensor(np.asarray(digits["train"]["label"]))
    opt = torch.optim.Adam(mlp.parameters(), lr=0.01)
    for _ in range(15):  # a weak classifier: its predictions differ from the labels
        opt.zero_grad()
        nn.functional.cross_entropy(mlp(train_x), train_y).backward()
        opt.step()
    sm = SplitModel(mlp)
    ds = digits["test"]
    profile = profile_model(sm, ds, model_name="mlp", dataset_name="digits", labels="predicted", progress=False)
    x = torch.tensor(np.asarray(ds.with_format("numpy")["pixels"]), dtype=torch.float32) / 255
    with torch.no_grad():
        logits, zs = sm.forward_all(x)
    pred = logits.argmax(1).numpy()
    assert profile.class_counts == np.bincount(pred, minlength=10).tolist()
    assert profile.labels == "predicted"
    small = [c for c, n in enumerate(profile.class_counts) if n < 2]
    assert sorted(int(c) for c in profile.small_classes) == small
    ref = numpy_reference(zs[1].numpy(), pred, 10)
    kept = [r for c, r in enumerate(ref["rc2_per_class"]) if c not in small]
    assert profile.splits[1].rc2 == pytest.approx(np.mean(kept), rel=1e-5)


def test_collapsed_predictions_are_a_clear_error(digits):
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8)  # untrained: predicts one class for every digit
    sm = split_model(build_model(spec), spec)
    with pytest.raises(ProfileError, match="at least 2 classes with 2 or more samples"):
        profile_model(sm, digits["test"], model_name="cnn", dataset_name="digits", labels="predicted", progress=False)


def test_two_processes_give_the_single_process_numbers(tmp_path, torchrun):
    single = seeded_profile(batch_size=64)
    out = tmp_path / "profile.json"
    torchrun(str(Path(__file__).parent / "probe_worker.py"), str(out), "64")
    written = json.loads(out.read_text())
    assert written["processes"] == 2  # really two processes, each profiling its own shard
    multi = Profile.from_dict(written)
    assert multi.num_samples == single.num_samples  # no padding duplicates
    assert multi.class_counts == single.class_counts
    for a, b in zip(multi.splits, single.splits):
        for key in ("rc2", "global_var", "rho", "h_bound_feature", "h_bound_decision"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-6), (a.name, key)
    assert (multi.gpz.index, multi.gpz.zone) == (single.gpz.index, single.gpz.zone)
    assert multi.gpz.drops == pytest.approx(single.gpz.drops, rel=1e-6)
    assert multi.accuracy == pytest.approx(single.accuracy)


class NaNAfterFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Flatten(), nn.Linear(64, 10)

    def forward(self, x):
        return self.b(self.a(x) * float("nan"))


def test_nan_features_are_a_clear_error(digits):
    sm = SplitModel(NaNAfterFirst(), ["mul", "b"])
    with pytest.raises(ProfileError, match=r"split 1 \(mul\) produced NaN or Inf"):
        profile_model(sm, digits["test"], model_name="m", dataset_name="digits", progress=False)


def test_wrong_number_of_classes_is_a_clear_error(digits):
    spec = ModelSpec("cnn", 7, 1, 8)
    sm = split_model(build_model(spec), spec)
    with pytest.raises(ProfileError, match=r"outputs shape \(7,\) but the data set has 10 classes"):
        profile_model(sm, digits["test"], model_name="cnn", dataset_name="digits", progress=False)


class Pair(nn.Module):
    def forward(self, x):
        return x, 2 * x


class TupleSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.flat, self.pair, self.fc = nn.Flatten(), Pair(), nn.Linear(64, 10)

    def forward(self, x):
        a, b = self.pair(self.flat(x))
        return self.fc(a + b)


def test_a_split_that_is_not_one_tensor_is_a_clear_error(digits):
    sm = SplitModel(TupleSplit(), ["pair", "fc"])
    with pytest.raises(ProfileError, match="split pair does not output one tensor"):
        profile_model(sm, digits["test"], model_name="m", dataset_name="digits", progress=False)
