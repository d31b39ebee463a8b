"""Attack building blocks: metrics against hand computations, decoder shapes, rMLE, sweep helpers."""

import json
import math

import datasets
import numpy as np
import pytest
import torch
from torch import nn

from vortex.attacks.base import train_together
from vortex.attacks.decoder import DecoderTraining, FitResult, build_decoder, z_layout
from vortex.attacks.metrics import MAX_PSNR, image_metrics, summarize
from vortex.attacks.optimize import invert_by_optimization, total_variation
from vortex.attacks.sweep import SplitAttack, attack_report, gpz_agreement, plan_passes, split_aux, unseen_train_rows
from vortex.data import take
from vortex.errors import AttackError
from vortex.records import AttackReport, Gpz, PosthocGpz, Profile, SplitStats
from vortex.report.plots import plot_attack, plot_reconstructions
from vortex.report.tables import attack_table


def numpy_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """SSIM of two [C, H, W] images in [0, 1], written out: 11-tap Gaussian window, reflect padding."""
    r = int(3.5 * sigma + 0.5)
    g = np.exp(-((np.arange(2 * r + 1) - r) ** 2) / (2 * sigma**2))
    window = np.outer(g / g.sum(), g / g.sum())
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for x, y in zip(a, b):
        px, py = np.pad(x, r, mode="reflect"), np.pad(y, r, mode="reflect")
        h, w = x.shape
        for i in range(h):
            for j in range(w):
                wx, wy = px[i : i + 2 * r + 1, j : j + 2 * r + 1], py[i : i + 2 * r + 1, j : j + 2 * r + 1]
                mx, my = (window * wx).sum(), (window * wy).sum()
                vx = max((window * wx * wx).sum() - mx * mx, 0)
                vy = max((window * wy * wy).sum() - my * my, 0)
                cov = (window * wx * wy).sum() - mx * my
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_metrics_match_a_hand_computation():
    rng = np.random.default_rng(0)
    target = rng.random((3, 2, 12, 10))
    recon = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    m = image_metrics(torch.tensor(recon), torch.tensor(target))
    for i in range(3):
        mse = np.mean((recon[i] - target[i]) ** 2)
        assert float(m["mse"][i]) == pytest.approx(mse, rel=1e-5)
        assert float(m["psnr"][i]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
        assert float(m["ssim"][i]) == pytest.approx(numpy_ssim(recon[i], target[i]), abs=1e-5)
        cos = (recon[i] * target[i]).sum() / np.linalg.norm(recon[i]) / np.linalg.norm(target[i])
        assert float(m["cosine"][i]) == pytest.approx(cos, rel=1e-5)
    summary = summarize(m)
    assert summary["num_images"] == 3
    assert summary["psnr"] == pytest.approx(float(m["psnr"].mean()), rel=1e-6)  # per image, then the mean


def test_metrics_of_constant_and_exact_images():
    a, b = 0.2, 0.7
    m = image_metrics(torch.full((1, 1, 8, 8), a), torch.full((1, 1, 8, 8), b))
    c1 = 0.01**2
    assert float(m["ssim"][0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)
    assert float(m["mse"][0]) == pytest.approx(0.25) and float(m["psnr"][0]) == pytest.approx(10 * math.log10(4))
    x = torch.rand(2, 1, 8, 8)
    exact = image_metrics(x, x)
    assert exact["mse"].tolist() == [0, 0] and exact["psnr"].tolist() == [MAX_PSNR, MAX_PSNR]
    assert exact["ssim"].tolist() == pytest.approx([1, 1]) and exact["cosine"].tolist() == pytest.approx([1, 1])
    with pytest.raises(AttackError, match="same shape"):
        image_metrics(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 7, 8))


@pytest.mark.parametrize(
    "z_shape,image_shape,kind",
    [
        ((32, 8, 8), (1, 8, 8), "spatial"),
        ((64, 4, 4), (1, 28, 28), "spatial"),
        ((512, 4, 4), (3, 32, 32), "spatial"),
        ((16, 5, 3), (3, 20, 12), "spatial"),
        ((10,), (1, 8, 8), "flat"),
        ((512,), (3, 28, 28), "flat"),
        ((17, 64), (1, 16, 16), "tokens"),  # ViT: CLS + 4x4 patches
        ((49, 32), (3, 28, 28), "tokens"),  # no CLS, 7x7 patches
        ((12, 20), (1, 8, 8), "flat"),  # a sequence that is not a patch grid
    ],
)
@pytest.mark.parametrize("enhanced", [False, True])
def test_decoder_returns_the_image_shape(z_shape, image_shape, kind, enhanced):
    torch.manual_seed(0)
    decoder = build_decoder(z_shape, image_shape, width=16, enhanced=enhanced)
    assert decoder.layout.kind == kind
    with torch.no_grad():
        out = decoder(torch.randn(3, *z_shape))
    assert out.shape == (3, *image_shape)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_token_layout_drops_the_cls_token():
    assert z_layout((17, 64)).cls_token and z_layout((17, 64)).grid == 4
    assert not z_layout((16, 64)).cls_token and z_layout((16, 64)).grid == 4
    assert z_layout((64,)).kind == "flat" and z_layout((4, 4, 4, 4)).kind == "flat"


def fit_decoder(decoder: nn.Module, *pairs: torch.Tensor, progress: bool = False, **options) -> FitResult:
    """One decoder trained alone, as a sweep trains each of its splits' decoders."""
    training = DecoderTraining(decoder, *pairs, **options)
    train_together([training], progress=progress)
    return training.result


def test_decoder_learns_an_invertible_map_and_stops_early():
    torch.manual_seed(0)
    x = torch.rand(160, 1, 8, 8)
    z = torch.cat([x, 1 - x], dim=1)  # a perfectly invertible "edge"
    decoder = build_decoder((2, 8, 8), (1, 8, 8), width=16)
    fit = fit_decoder(decoder, z[:128], x[:128], z[128:], x[128:], epochs=40, patience=3, lr=5e-3, progress=False)
    assert fit.val_mse < 0.01 and 1 <= fit.epochs_run <= 40
    with pytest.raises(AttackError, match="at least 1"):
        fit_decoder(decoder, z, x, z, x, epochs=0, progress=False)


def test_decoders_trained_together_learn_what_each_learns_alone():
    """train_together interleaves the steps of several decoders (one stopping early): each ends with
    the weights, epochs and held-out MSE it reaches when trained alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 1, 8, 8, generator=g)
    zs = [torch.cat([x, 1 - x], dim=1), torch.randn(100, 12, generator=g)]  # invertible, and noise
    settings = [dict(epochs=6, patience=5, seed=3), dict(epochs=6, patience=1, seed=4)]

    def run(i: int) -> DecoderTraining:
        torch.manual_seed(i)
        decoder = build_decoder(zs[i].shape[1:], (1, 8, 8), width=8)
        return DecoderTraining(decoder, zs[i][:80], x[:80], zs[i][80:], x[80:], batch_size=16, **settings[i])

    alone = []
    for i in range(2):
        t = run(i)
        train_together([t], progress=False)
        alone.append(t)
    together = [run(0), run(1)]
    train_together(together, progress=False)
    for a, b in zip(alone, together):
        assert (a.result.epochs_run, a.result.val_mse) == (b.result.epochs_run, b.result.val_mse)
        for (name, wa), wb in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
            assert torch.equal(wa, wb), name
        assert b.seconds > 0
    assert together[1].result.epochs_run < together[0].result.epochs_run == 6  # the second stopped early


def test_a_split_attacked_with_others_gives_its_numbers_alone():
    """The sweep trains the decoders of its splits together; what each split scores does not depend
    on which others are attacked with it, and its record says how long its decoder computed."""
    from vortex.attacks.base import AttackConfig
    from vortex.attacks.sweep import attack_splits
    from vortex.data import load_data
    from vortex.models import ModelSpec, build_model, split_model

    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8, {"width": 4})
    sm = split_model(build_model(spec).eval(), spec)
    data = load_data("digits")
    private = take(data["test"], 24, seed=0)
    config = AttackConfig(epochs=2, batch_size=16, progress=False)
    run = lambda splits: attack_splits(sm, private, data["train"], splits, config, aux_samples=64)  # noqa: E731
    both = run([1, 6])
    alone = run([1]) + run([6])
    for a, b in zip(both, alone):
        assert (a.index, a.metrics, a.epochs_run, a.val_mse) == (b.index, b.metrics, b.epochs_run, b.val_mse)
        assert torch.equal(a.recons, b.recons)
        assert 0 < a.compute_seconds <= a.seconds
        record = a.record()
        assert record.compute_seconds == round(a.compute_seconds, 3) and record.seconds == round(a.seconds, 3)


@pytest.mark.parametrize("edge", [nn.Identity(), nn.Conv2d(1, 3, 1), nn.Sequential(nn.Flatten(), nn.Linear(64, 96))])
def test_rmle_recovers_the_input_through_a_linear_edge(edge):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        z = edge(x)
    recon = invert_by_optimization(edge, z, (1, 8, 8), steps=300, lr=0.05, tv_weight=0.0, progress=False)
    assert float((recon - x).pow(2).mean()) < 1e-4
    assert all(p.requires_grad for p in edge.parameters())  # the edge is left as it was


def test_total_variation_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    assert float(total_variation(x)[0]) == pytest.approx(0.5 + 0.5)  # |dx| mean 0.5, |dy| mean 0.5


def test_features_are_grouped_to_fit_memory():
    dims = {1: 100, 2: 100, 3: 10, 4: 1000}
    assert plan_passes(dims, 10, budget=10**9) == [[1, 2, 3, 4]]
    assert plan_passes(dims, 10, budget=4 * 10 * 210) == [[1, 2, 3], [4]]


def _canonical(n: int) -> datasets.Dataset:
    features = datasets.Features(pixels=datasets.Array3D((1, 4, 4), "uint8"), label=datasets.ClassLabel(num_classes=2))
    return datasets.Dataset.from_dict({"pixels": np.zeros((n, 1, 4, 4), np.uint8), "label": [0] * n}, features=features)


def test_aux_rows_leave_out_what_vortex_train_trained_on():
    ds = _canonical(100)
    ds = ds.map(lambda row, i: {"pixels": np.full((1, 4, 4), i, np.uint8)}, with_indices=True, features=ds.features)
    ids = lambda d: {int(np.asarray(p)[0, 0, 0]) for p in d["pixels"]}  # noqa: E731
    trained_on = ids(take(ds, 30))  # what vortex/train.py trains on with max_train_samples: 30
    unseen, source = unseen_train_rows(ds, {"recipe": {"dataset": "d", "max_train_samples": 30}}, "d")
    assert len(unseen) == 70 and not ids(unseen) & trained_on and "not trained on" in source
    assert (
        unseen_train_rows(ds, {"recipe": {"dataset": "d", "max_train_samples": None}}, "d")[1]
        == "train split (the model was trained on it too)"
    )
    assert unseen_train_rows(ds, {}, "d") == (ds, "train split")


def test_empty_or_tiny_aux_set_is_refused():
    for n in (0, 5):
        with pytest.raises(AttackError, match=f"has {n} images.*at least 32"):
            split_aux(_canonical(n), None, seed=0, val_fraction=0.1)
    train, val = split_aux(_canonical(100), 50, seed=0, val_fraction=0.1)
    assert (len(train), len(val)) == (42, 8)


def _attack(k: int, mse: float) -> SplitAttack:
    metrics = {"mse": mse, "psnr": 10 * math.log10(1 / mse), "ssim": 1 - 10 * mse, "cosine": 1 - mse, "num_images": 4}
    return SplitAttack(k, f"block{k}", [8, 2, 2], metrics, 0.1, torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), 3, mse)


def _profile(rho: list[float], gpz: int) -> Profile:
    """A profile with these rho values and this GPZ (the other statistics are placeholders)."""
    splits = [
        SplitStats(
            index=i,
            name=f"block{i}",
            shape=[8],
            dim=8,
            bytes=32,
            edge_params=0,
            rc2=r,
            rc2_per_class=[r],
            global_var=1.0,
            rho=r,
            sketch_dim=None,
            h_bound_feature=0.0,
            h_bound_decision=0.0,
            h_bound_per_dim=0.0,
            decisive="feature",
        )
        for i, r in enumerate(rho, start=1)
    ]
    gpz_record = Gpz(index=gpz, zone=[gpz], criterion="test", quantity="rho", drops=[])
    return Profile(
        vortex_version="test",
        model="m",
        dataset="d",
        num_samples=1,
        num_classes=1,
        labels="true",
        accuracy=1.0,
        class_counts=[1],
        small_classes={},
        splits=splits,
        gpz=gpz_record,
    )


def test_report_plots_and_agreement(tmp_path):
    profile = _profile([0.9 - 0.1 * k for k in range(6)], gpz=4)
    attacks = [_attack(1, 0.01), _attack(3, 0.012), _attack(5, 0.05)]
    result = attack_report(attacks, model="m", dataset="d", aux_dataset="d", attack="decoder", profile=profile)
    assert result.gpz_posthoc.index == 5 and result.gpz_posthoc.interval == [4, 5]
    assert result.agreement is True  # the rise happened somewhere in 4..5, which holds the predicted 4
    assert [s.rho for s in result.splits] == pytest.approx([0.9, 0.7, 0.5])
    assert not gpz_agreement([2], PosthocGpz(index=5, interval=[4, 5]))
    assert AttackReport.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    table = attack_table(result)
    assert "<- GPZ a priori" not in table and "<- post hoc" in table and "they agree" in table
    from PIL import Image

    for path in (
        plot_attack(result, tmp_path / "a.png"),
        plot_reconstructions(attacks[0].originals, attacks[0].recons, tmp_path / "g.png", "t"),
    ):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300
    falling = attack_report(
        [_attack(1, 0.03), _attack(2, 0.02)], model="m", dataset="d", aux_dataset="d", attack="decoder", profile=profile
    )
    assert falling.gpz_posthoc.index is None and falling.agreement is None
    assert "never rises" in attack_table(falling)
    single = attack_report(attacks[:1], model="m", dataset="d", aux_dataset=None, attack="optimize", profile=None)
    assert single.gpz_posthoc.index is None and single.agreement is None
    assert "2 or more splits" in attack_table(single)


@pytest.fixture(scope="module")
def digit_features():
    """z at split 2 of a seeded (untrained) width-8 cnn for 700 aux and 200 private digits, with labels."""
    from vortex.attacks.sweep import extract_features
    from vortex.data import load_data
    from vortex.models import ModelSpec, build_model, split_model

    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8, {"width": 8})
    sm = split_model(build_model(spec).eval(), spec)
    data = load_data("digits")
    aux, private = take(data["train"], 700, seed=0), take(data["test"], 200, seed=0)
    cpu = torch.device("cpu")
    x_a, z_a = extract_features(sm, aux, [2], image_size=8, channels=1, device=cpu, progress=False)
    x_p, z_p = extract_features(sm, private, [2], image_size=8, channels=1, device=cpu, progress=False)
    return x_a, z_a[2], torch.tensor(aux["label"]), x_p, z_p[2], torch.tensor(private["label"])


def test_inflated_class_means_do_not_fool_the_decoder_attack(digit_features):
    """A model that multiplies its class means by 100 and leaves the within-class residual as it
    is removes no information; a decoder on raw z is fooled by it, vortex's attack is not."""
    from vortex.attacks.base import AttackConfig, AuxPairs
    from vortex.attacks.decoder import DecoderAttack

    x_a, z_a, y_a, x_p, z_p, y_p = digit_features
    means = torch.stack([z_a[y_a == c].mean(0) for c in range(10)])
    config = AttackConfig(epochs=15, patience=4, progress=False, clusters=10)
    mse = {}
    for scale in (1, 100):
        za, zp = z_a + (scale - 1) * means[y_a], z_p + (scale - 1) * means[y_p]
        attack = DecoderAttack(config, (1, 8, 8), seed=2)
        attack.fit(None, AuxPairs(za[:600], x_a[:600], za[600:], x_a[600:]))
        torch.manual_seed(2)
        raw = fit_decoder(
            build_decoder(za.shape[1:], (1, 8, 8)),
            za[:600],
            x_a[:600],
            za[600:],
            x_a[600:],
            epochs=15,
            patience=4,
            seed=2,
            progress=False,
        ).decoder
        with torch.no_grad():
            mse[scale] = (float(((attack.invert(zp) - x_p) ** 2).mean()), float(((raw(zp) - x_p) ** 2).mean()))
    assert mse[100][1] > 2 * mse[1][1]  # the trick works on a decoder that reads z as it comes
    assert mse[100][0] <= 1.25 * mse[1][0]  # and not on vortex's decoder attack
    assert mse[1][0] < 0.02  # split 2 of this cnn is invertible: a real attack, not a blur


def test_standardize_undoes_any_per_dimension_scale():
    from vortex.attacks.prepare import Standardize

    z = torch.randn(300, 4, 3, 3) * 2 + 1
    scale, shift = torch.rand(4, 3, 3) * 50 + 0.01, torch.randn(4, 3, 3) * 100
    a, b = Standardize.fit(z), Standardize.fit(z * scale + shift)
    torch.testing.assert_close(b(z * scale + shift), a(z), rtol=1e-4, atol=1e-4)
    expected = (z.double() - z.double().mean(0)) / z.double().std(0)
    torch.testing.assert_close(a(z).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [8, 8 * 300 * 5, 1 << 20])
def test_moments_taken_a_few_columns_at_a_time_are_the_float64_moments(monkeypatch, chunk_bytes):
    """Column by column, 5 at a time or all at once: the same float64 mean and std as over the whole z,
    of z or of its residual from the cluster points; a constant element gets std 1."""
    from vortex.attacks import prepare

    monkeypatch.setattr(prepare, "MOMENT_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 4, 3, 3, generator=g) * 3 + 1
    z[:, 0, 0, 0] = 2.5
    points, labels = torch.randn(5, 4, 3, 3, generator=g), torch.randint(0, 5, (300,), generator=g)
    for of, args in ((z, ()), (z - points[labels], (points, labels))):
        of = of.double()
        std = of.std(0)
        mean, s = prepare._moments(z, *args)
        assert mean.dtype == s.dtype == torch.float32 and mean.shape == s.shape == (4, 3, 3)
        assert torch.equal(mean, of.mean(0).float())
        assert torch.equal(s, torch.where(std > 1e-12, std, torch.ones_like(std)).float())
    assert prepare._moments(z)[1][0, 0, 0] == 1


def test_features_with_nan_or_inf_anywhere_are_refused():
    from vortex.attacks.sweep import _check_z
    from vortex.models import ModelSpec, build_model, split_model

    spec = ModelSpec("cnn", 10, 1, 8, {"width": 4})
    sm = split_model(build_model(spec), spec)
    for dtype in (torch.float32, torch.float16):
        z = torch.randn(3, 4, 8, 8).to(dtype)
        assert _check_z(sm, 1, z) is z
        for bad in (math.nan, math.inf, -math.inf):
            for where in ((0, 0, 0, 0), (1, 2, 3, 4), (2, 3, 7, 7)):
                broken = z.clone()
                broken[where] = bad
                with pytest.raises(AttackError, match=r"^split 1 \(.+\) produced NaN or Inf features"):
                    _check_z(sm, 1, broken)


def test_features_are_filled_in_batch_by_batch_in_order(monkeypatch):
    from vortex.attacks import sweep
    from vortex.data import load_data
    from vortex.models import ModelSpec, build_model, split_model

    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8, {"width": 4})
    sm = split_model(build_model(spec).eval(), spec)
    ds = take(load_data("digits")["test"], 70, seed=0)
    kw = dict(image_size=8, channels=1, device=torch.device("cpu"), progress=False)
    monkeypatch.setattr(sweep, "CPU_EVAL_BATCH", 32)  # 32 + 32 + 6
    x, z = sweep.extract_features(sm, ds, [1, 8], **kw)
    monkeypatch.setattr(sweep, "CPU_EVAL_BATCH", 100)  # one batch
    x_one, z_one = sweep.extract_features(sm, ds, [1, 8], **kw)
    assert torch.equal(x, x_one) and x.shape == (70, 1, 8, 8) and set(z) == {1, 8}
    for k in (1, 8):
        assert z[k].dtype == torch.float32 and z[k].shape == z_one[k].shape and len(z[k]) == 70
        torch.testing.assert_close(z[k], z_one[k])


def test_attacks_are_found_by_name_or_by_the_class_the_user_names(tmp_path, monkeypatch):
    from vortex.attacks.base import Attack
    from vortex.attacks.sweep import get_attack

    assert {get_attack(n).name for n in ("decoder", "enhanced", "optimize")} == {"decoder", "enhanced", "optimize"}
    assert get_attack("optimize").needs_aux is False and get_attack("decoder").needs_aux is True
    (tmp_path / "myattack.py").write_text(
        "import torch\nfrom vortex.attacks.base import Attack\n\n"
        "class Gray(Attack):\n    name = 'gray'\n    needs_aux = False\n\n"
        "    def fit(self, edge, aux):\n        pass\n\n"
        "    def invert(self, z):\n        return torch.full((len(z), *self.image_shape), 0.5)\n\n"
        "class NotAnAttack:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    gray = get_attack("myattack:Gray")
    assert issubclass(gray, Attack) and gray.name == "gray"
    with pytest.raises(AttackError, match="is not a subclass of vortex.attacks.base.Attack"):
        get_attack("myattack:NotAnAttack")
    with pytest.raises(AttackError, match="unknown attack 'nope': choose one of decoder, enhanced, optimize"):
        get_attack("nope")


def test_a_flat_two_axis_z_is_centred_as_one_vector():
    """z of shape [8, 3] is no token grid: the residual channel must not turn it into 16 'tokens'."""
    from vortex.attacks.base import AttackConfig, AuxPairs
    from vortex.attacks.decoder import DecoderAttack

    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(80, 8, 3, generator=g), torch.rand(80, 1, 8, 8, generator=g)
    attack = DecoderAttack(AttackConfig(epochs=1, progress=False, clusters=3), (1, 8, 8))
    attack.fit(None, AuxPairs(z[:64], x[:64], z[64:], x[64:]))
    decoder = attack.decoder[-1]
    assert decoder.layout.kind == "flat" and decoder.stem.linear.in_features == 2 * 8 * 3
    assert attack.invert(z[:5]).shape == (5, 1, 8, 8)


def test_the_sweep_centres_on_the_model_class_count_by_default():
    from vortex.attacks.sweep import _z_shapes
    from vortex.data import load_data
    from vortex.models import ModelSpec, build_model, split_model

    spec = ModelSpec("cnn", 10, 1, 8, {"width": 4})
    sm = split_model(build_model(spec), spec)
    shapes, outputs = _z_shapes(sm, load_data("digits")["test"], [1, 8], 8, 1, torch.device("cpu"))
    assert shapes == {1: (4, 8, 8), 8: (10,)} and outputs == 10
