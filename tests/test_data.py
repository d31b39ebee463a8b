"""Tests for vortex.data: built-ins, folders, parquet, Hub datasets (a local server), adaptation and loaders."""

import json
import os
import re
import subprocess
import sys
import types

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from vortex import data
from vortex.data import adapt_images, class_names, data_shape, load_data, make_loader, num_classes, take
from vortex.errors import DataError


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _pixels(*splits):
    """All stored images of `splits` as one uint8 array (datasets' numpy format gives int64)."""
    return np.concatenate([s.with_format("numpy")["pixels"] for s in splits]).astype(np.uint8)


def _save(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_digits_shapes_values_and_labels(digits):
    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797
    assert data_shape(train) == (1, 8, 8)
    assert num_classes(train) == 10 and class_names(test) == [str(d) for d in range(10)]
    assert train.features["pixels"].dtype == "uint8"
    pixels = _pixels(train, test)
    assert pixels.max() == 255 and pixels.min() == 0
    # every stored image is round(x * 255 / 16) of one of sklearn's images
    expected = np.round(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    stored = pixels.reshape(1797, -1)
    assert sorted(map(bytes, stored)) == sorted(map(bytes, expected))


def test_split_is_deterministic_and_stratified(digits):
    again = load_data("digits", seed=0)
    other = load_data("digits", seed=1)
    first = _pixels(digits["test"])
    assert np.array_equal(first, _pixels(again["test"]))
    assert not np.array_equal(first, _pixels(other["test"]))
    assert set(digits["test"]["label"]) == set(range(10))
    assert len(load_data("digits", test_fraction=0.5)["test"]) in (898, 899)


@pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="optional data: Debian package dataset-fashion-mnist is not installed "
    "(apt-get install dataset-fashion-mnist; .ci/run installs it)",
)
def test_fashion_mnist():
    dd = load_data("fashion-mnist")
    assert (len(dd["train"]), len(dd["test"])) == (60000, 10000)
    assert data_shape(dd["train"]) == (1, 28, 28)
    assert class_names(dd["train"])[0] == "T-shirt/top" and num_classes(dd["test"]) == 10
    assert np.bincount(dd["test"]["label"]).tolist() == [1000] * 10


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")


def test_mnist_5k():
    dd = load_data("mnist-5k")
    assert len(dd["train"]) + len(dd["test"]) == 5000
    assert data_shape(dd["test"]) == (1, 28, 28) and num_classes(dd["train"]) == 10


def test_rgb_folder_resized_to_first_image(tmp_path):
    for i, size in enumerate([(6, 4), (9, 7), (6, 4), (3, 3), (6, 4)]):
        _save(tmp_path / "cat" / f"{i}.png", "RGB", size, (200, 10, 10))
        _save(tmp_path / "dog" / f"{i}.png", "RGB", size, (10, 10, 200))
    dd = load_data(str(tmp_path), seed=3)
    assert data_shape(dd["train"]) == (3, 4, 6)  # (C, H, W) of the first image, 6 wide, 4 high
    assert class_names(dd["train"]) == ["cat", "dog"]
    rows = datasets.concatenate_datasets([dd["train"], dd["test"]]).with_format("numpy")[:]
    assert len(rows["label"]) == 10
    red = rows["pixels"][:, 0].mean(axis=(1, 2))
    assert np.allclose(red[rows["label"] == 0], 200) and np.allclose(red[rows["label"] == 1], 10)
    x, y = next(iter(make_loader(dd["train"], 8, channels=1)))  # over Arrow files on disk
    assert x.shape == (8, 1, 4, 6)
    assert torch.allclose(
        x[:, 0, 0, 0],
        torch.where(y == 0, 0.299 * 200 + 0.587 * 10 + 0.114 * 10, 0.299 * 10 + 0.587 * 10 + 0.114 * 200) / 255,
    )


def test_gray_folder_and_requested_size(tmp_path):
    for cls, value in (("a", 30), ("b", 220)):
        for i in range(4):
            _save(tmp_path / cls / f"{i}.png", "L", (5, 5), value)
    dd = load_data(str(tmp_path))
    assert data_shape(dd["train"]) == (1, 5, 5)
    assert data_shape(load_data(str(tmp_path), image_size=8, channels=3)["test"]) == (3, 8, 8)


def test_folder_with_train_and_test_uses_them(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("x", "y"):
            for i in range(n):
                _save(tmp_path / split / cls / f"{i}.png", "L", (4, 4), 7)
    dd = load_data(str(tmp_path))
    assert (len(dd["train"]), len(dd["test"])) == (6, 4)


def test_corrupt_image_is_named(tmp_path):
    for i in range(3):
        _save(tmp_path / "a" / f"{i}.png", "L", (4, 4), 0)
        _save(tmp_path / "b" / f"{i}.png", "L", (4, 4), 9)
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_data(str(tmp_path))
    with pytest.raises(DataError, match="broken.png"):  # decoded during conversion
        load_data(str(tmp_path), channels=1)


def test_unlabelled_sources_are_refused(tmp_path):
    for i in range(3):
        _save(tmp_path / "flat" / f"{i}.png", "L", (4, 4), i)
    with pytest.raises(DataError, match="no label column"):
        load_data(str(tmp_path / "flat"))
    path = tmp_path / "nolabels.parquet"
    datasets.Dataset.from_dict({"image": [np.zeros((4, 4), np.uint8)] * 3}).to_parquet(path)
    with pytest.raises(DataError, match="no label column"):
        load_data(str(path))


@pytest.mark.parametrize("missing", [float("nan"), None])
def test_missing_labels_in_a_parquet_file_are_one_line(tmp_path, missing):
    path = tmp_path / "holes.parquet"
    labels = [float(i % 2) for i in range(6)]
    labels[3] = missing
    datasets.Dataset.from_dict({"pixels": np.zeros((6, 4, 4), np.uint8), "label": labels}).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'label' has missing labels \(None or NaN\): label every image"):
        load_data(str(path))


def test_parquet_with_image_column_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (12, 5, 6, 3), dtype=np.uint8)
    source = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in arrays], "labels": ["b", "a", "c"] * 4},
        features=datasets.Features(img=datasets.Image(), labels=datasets.Value("string")),
    )
    path = tmp_path / "images.parquet"
    source.to_parquet(path)
    dd = load_data(str(path), test_fraction=0.25)
    assert class_names(dd["train"]) == ["a", "b", "c"] and data_shape(dd["test"]) == (3, 5, 6)
    stored = {bytes(p): y for split in dd.values() for p, y in zip(_pixels(split), split["label"])}
    expected = {bytes(a.transpose(2, 0, 1)): "abc".index(y) for a, y in zip(arrays, source["labels"])}
    assert stored == expected


def test_parquet_with_array_column(tmp_path):
    path = tmp_path / "arrays.parquet"
    pixels = np.arange(8 * 16, dtype=np.uint8).reshape(8, 4, 4)
    datasets.Dataset.from_dict({"pixels": pixels, "label": [0, 1] * 4}).to_parquet(path)
    dd = load_data(str(path), test_fraction=0.25)
    assert data_shape(dd["train"]) == (1, 4, 4)
    got = _pixels(dd["train"], dd["test"])
    assert sorted(map(bytes, got[:, 0])) == sorted(map(bytes, pixels))


def test_adapt_images_by_hand():
    rgb = torch.tensor([[[[255]], [[0]], [[0]]], [[[0]], [[255]], [[51]]]], dtype=torch.uint8)
    gray = adapt_images(rgb, None, 1)
    assert gray.shape == (2, 1, 1, 1) and gray.dtype == torch.float32
    assert torch.allclose(gray.flatten(), torch.tensor([0.299, 0.587 + 0.114 * 0.2]))
    repeated = adapt_images(torch.full((1, 1, 2, 2), 51, dtype=torch.uint8), None, 3)
    assert repeated.shape == (1, 3, 2, 2) and torch.allclose(repeated, torch.tensor(0.2))
    constant = adapt_images(torch.full((2, 3, 7, 5), 0.25), 16, None)
    assert constant.shape == (2, 3, 16, 16) and torch.allclose(constant, torch.tensor(0.25))
    ramp = adapt_images(torch.linspace(0, 1, 64).reshape(1, 1, 8, 8), 4, None)
    assert ramp.shape == (1, 1, 4, 4) and 0 <= ramp.min() < ramp.max() <= 1
    with pytest.raises(DataError, match="channels"):
        adapt_images(torch.zeros(1, 2, 4, 4), None, 3)


def test_make_loader_batches(digits):
    train = digits["train"]
    x, y = next(iter(make_loader(train, 32, image_size=12, channels=3)))
    assert x.shape == (32, 3, 12, 12) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1
    x, y = next(iter(make_loader(train, 4)))
    first = torch.tensor(_pixels(train.select(range(4)))) / 255
    assert torch.equal(x, first) and y.tolist() == train[:4]["label"]
    sizes = [len(y) for _, y in make_loader(train, 64, max_samples=100)]
    assert sizes == [64, 36]
    assert len(make_loader(train, 64, max_samples=100, drop_last=True)) == 1


def test_make_loader_shuffle_is_seeded(digits):
    def labels(**kw):
        return torch.cat([y for _, y in make_loader(digits["train"], 50, **kw)]).tolist()

    plain = labels()
    assert labels(shuffle=True, seed=5) == labels(shuffle=True, seed=5)
    assert labels(shuffle=True, seed=5) != labels(shuffle=True, seed=6)
    assert sorted(labels(shuffle=True, seed=5)) == sorted(plain)
    assert labels(max_samples=40, seed=2) == labels(max_samples=40, seed=2) != plain[:40]


def test_take_is_a_seeded_subset(digits):
    train = digits["train"]
    assert take(train, None) is train
    some = take(train, 30, seed=4)
    assert len(some) == 30 and len(take(train, 10**6)) == len(train)
    assert some["label"] == take(train, 30, seed=4)["label"] != take(train, 30, seed=5)["label"]
    assert np.array_equal(_pixels(some)[:5], _pixels(take(train, 5, seed=4)))
    with pytest.raises(DataError, match="max_samples"):
        take(train, 0)


def test_unknown_source_lists_accepted_forms():
    with pytest.raises(DataError, match=r"built-in.*image folder.*parquet.*owner/name"):
        load_data("no such thing")


def _picture_parquet(path, rows=60):
    """A parquet file with a decoy first image `thumb`, the images in `picture` and classes in `kind`."""
    kinds = [i % 3 for i in range(rows)]
    datasets.Dataset.from_dict(
        {
            "thumb": [Image.new("L", (2, 2), 0) for _ in kinds],
            "picture": [Image.new("RGB", (5, 5), (60 * k, 0, 0)) for k in kinds],
            "kind": [f"k{k}" for k in kinds],
        },
        features=datasets.Features(thumb=datasets.Image(), picture=datasets.Image(), kind=datasets.Value("string")),
    ).to_parquet(path)
    return path


def test_named_columns_override_the_guess(tmp_path):
    path = _picture_parquet(tmp_path / "named.parquet")
    with pytest.raises(DataError, match="no label column"):  # the guess finds no 'label'
        load_data(str(path))
    dd = load_data(str(path), image_column="picture", label_column="kind")
    assert data_shape(dd["train"]) == (3, 5, 5) and class_names(dd["test"]) == ["k0", "k1", "k2"]
    assert data_shape(load_data(str(path), label_column="kind")["train"]) == (1, 2, 2)  # the first image column


@pytest.mark.parametrize("flag", ["image_column", "label_column"])
def test_a_wrong_column_is_one_line_listing_the_columns(tmp_path, flag):
    path = _picture_parquet(tmp_path / "cols.parquet", rows=6)
    with pytest.raises(DataError) as caught:
        load_data(str(path), **{flag: "klass"})
    message = str(caught.value)
    assert "\n" not in message and "no column 'klass' (columns: thumb, picture, kind)" in message
    assert f"--{flag}_name" in message


def test_config_and_columns_are_refused_where_they_do_not_apply(tmp_path):
    with pytest.raises(DataError, match="built-in with fixed columns"):
        load_data("digits", label_column="label")
    path = _picture_parquet(tmp_path / "local.parquet", rows=6)
    with pytest.raises(DataError, match="local folder or file: a config name"):
        load_data(str(path), config_name="gray")


def test_max_samples_are_chosen_before_any_image_is_converted(tmp_path, monkeypatch):
    path = _picture_parquet(tmp_path / "many.parquet", rows=200)
    full = load_data(str(path), image_column="picture", label_column="kind")
    converted, opened = [], []
    convert, open_image = data._convert_batch, data._open_image
    monkeypatch.setattr(
        data, "_convert_batch", lambda batch, rows, **kw: converted.extend(rows) or convert(batch, rows, **kw)
    )
    monkeypatch.setattr(
        data, "_open_image", lambda value, row, source: opened.append(row) or open_image(value, row, source)
    )
    some = load_data(str(path), image_column="picture", label_column="kind", max_samples={"train": 10, "test": 4})
    assert (len(some["train"]), len(some["test"])) == (10, 4) and len(converted) == 14
    assert len(opened) <= 2 * 14 + 1  # headers of the kept rows, the first image's size, then their conversion
    for split, n in (("train", 10), ("test", 4)):  # the very rows (and order) `take` picks after a full conversion
        assert np.array_equal(_pixels(some[split]), _pixels(take(full[split], n)))
        assert some[split]["label"] == take(full[split], n)["label"]
    digits = load_data("digits", max_samples={"train": 50})
    assert _pixels(digits["train"]).tolist() == _pixels(take(load_data("digits")["train"], 50)).tolist()


def test_a_single_name_hub_id_is_resolved_to_its_owner(monkeypatch, tmp_path):
    """The local Hub server cannot serve an id without an owner: the lookup and `datasets.load_dataset`
    are replaced at their boundary, and the call vortex makes is checked."""
    from huggingface_hub import HfApi

    path = _picture_parquet(tmp_path / "hub.parquet", rows=12)
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.DatasetDict(train=datasets.Dataset.from_parquet(str(path)))

    monkeypatch.setattr(HfApi, "dataset_info", lambda self, name: types.SimpleNamespace(id=f"uoft-cs/{name}"))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dd = load_data("cifar10", config_name="plain_text", image_column="picture", label_column="kind", test_fraction=0.25)
    assert calls == [(("uoft-cs/cifar10",), {"name": "plain_text"})]  # never trust_remote_code
    assert (len(dd["train"]), len(dd["test"])) == (9, 3)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, local_hub):
    """The local Hub serving the dataset repo org/tiny (two configs) and org/scripted (a loading script)."""
    from hub_helpers import dataset_repo, git_commit

    root = tmp_path_factory.mktemp("datahub")
    olah = local_hub
    files = dataset_repo()
    git_commit(olah.mirrors, "org/tiny", files, "two configs", repo_type="datasets")
    script = f"import pathlib\npathlib.Path({str(root / 'ran')!r}).touch()\n".encode()
    scripted = {"README.md": b"# scripted\n", "scripted.py": script, "data/train.parquet": files["gray/train.parquet"]}
    git_commit(olah.mirrors, "org/scripted", scripted, "a loading script", repo_type="datasets")
    return {"root": root, "url": olah.url}


LOAD = """
import json, sys
from vortex.data import class_names, data_shape, load_data
from vortex.errors import DataError
results = []
for call in json.loads(sys.argv[1]):
    try:
        dd = load_data(**call)
    except DataError as e:
        results.append({"error": str(e)})
    else:
        train, test = dd["train"], dd["test"]
        results.append({"shape": data_shape(train), "names": class_names(train), "sizes": [len(train), len(test)]})
print(json.dumps(results))
"""


def _load_in_a_user_process(hub, calls, **env):
    """`load_data(**call)` for each call in a fresh process with HF_ENDPOINT at the local server."""
    environ = {**os.environ, "HF_ENDPOINT": hub["url"], "HF_HOME": str(hub["root"] / "hf_home"), **env}
    environ.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(calls)], env=environ, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.hub
def test_hub_datasets_with_config_and_columns(hub):
    named = {"source": "org/tiny", "image_column": "picture", "label_column": "kind"}
    gray, rgb, guessed, no_config, wrong_column, scripted, absent, single = _load_in_a_user_process(
        hub,
        [
            {**named, "config_name": "gray"},
            {**named, "config_name": "rgb", "max_samples": {"train": 10}},
            {"source": "org/tiny", "config_name": "gray"},
            {**named, "config_name": "nope"},
            {**named, "config_name": "gray", "label_column": "klass"},
            {"source": "org/scripted"},
            {"source": "org/absent"},
            {"source": "absent"},
        ],
    )
    assert gray == {"shape": [1, 8, 8], "names": ["a", "b", "c"], "sizes": [24, 9]}
    assert rgb == {"shape": [3, 8, 8], "names": ["a", "b", "c"], "sizes": [10, 6]}  # 30 rows split 24 / 6
    assert guessed["shape"] == [1, 4, 4] and guessed["names"] == ["0"]  # the first image column, the `label` column
    for failed in (no_config, wrong_column, scripted, absent, single):
        assert "\n" not in failed["error"] and "Traceback" not in failed["error"]
    assert "'nope'" in no_config["error"] and "gray" in no_config["error"]
    assert "no column 'klass' (columns: thumb, picture, kind, label)" in wrong_column["error"]
    assert "scripts are no longer supported" in scripted["error"] and not (hub["root"] / "ran").exists()
    for failed in (absent, single):
        assert re.search(r"unknown data set .*built-in.*image folder.*parquet.*owner/name", failed["error"])
    offline = _load_in_a_user_process(hub, [{**named, "config_name": "gray"}], HF_HUB_OFFLINE="1")
    assert offline == [gray]  # from the cache
