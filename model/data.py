"""MNIST: finding, downloading and reading it, and turning it into training batches.

    >>> import numpy as np
    >>> from model.data import load_mnist, scale, one_hot, iterate_batches
    >>> data = load_mnist("/path/to/mnist")          # or $MNIST_DIR, the cache, a download
    >>> x, y = scale(data.x_train), one_hot(data.y_train)   # (60000, 28, 28, 1) f32, (60000, 10) f32
    >>> for xb, yb in iterate_batches(x, y, 64, rng=np.random.default_rng(0)): ...

Where load_mnist looks, in order (the first that has the data wins):
  1. `data_dir`, else $MNIST_DIR: the four IDX files (gzipped or not) or a Keras-style mnist.npz.
     A directory given this way must hold the data: it is an error, not a reason to download.
  2. the cache directory: `cache_dir`, else $CONVBENCH_CACHE, else ~/.cache/convbench/mnist.
  3. a download from MIRRORS into the cache, each file checked against its SHA-256 in FILES.
  4. tf.keras.datasets.mnist.load_data(), if TensorFlow is installed.
Arrays come back as they are stored: images (N, 28, 28) uint8, labels (N,) uint8. The helpers
below make the float NHWC arrays the network trains on.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FILES = {
    "train-images-idx3-ubyte.gz": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
# Array name -> (IDX file name without .gz, number of dimensions).
IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", 3),
    "y_train": ("train-labels-idx1-ubyte", 1),
    "x_test": ("t10k-images-idx3-ubyte", 3),
    "y_test": ("t10k-labels-idx1-ubyte", 1),
}
NPZ_FILE = "mnist.npz"
NUM_CLASSES = 10
DOWNLOAD_TIMEOUT = 30.0  # seconds without progress before a mirror counts as failed
_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"


class MNISTFormatError(ValueError):
    """A data file exists but is not valid MNIST (bad magic, truncated, corrupt gzip, ...)."""


class DownloadError(OSError):
    """No mirror delivered a file with the expected checksum."""


@dataclass(frozen=True, repr=False)
class MNIST:
    """x_train (N, 28, 28) uint8, y_train (N,) uint8 in 0..9, x_test (M, 28, 28) uint8,
    y_test (M,) uint8; `source` says where the arrays came from (for logs and reports)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def __repr__(self) -> str:
        # The default repr would print four arrays; the shapes are what one wants to see.
        return (
            f"MNIST(x_train={self.x_train.shape}, y_train={self.y_train.shape}, "
            f"x_test={self.x_test.shape}, y_test={self.y_test.shape}, source={self.source!r})"
        )


def default_cache_dir() -> Path:
    """$CONVBENCH_CACHE if set, else ~/.cache/convbench/mnist (the directory of the MNIST files)."""
    env = os.environ.get("CONVBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convbench" / "mnist"


# ---- reading -------------------------------------------------------------------------------------


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """One IDX file of unsigned bytes (gzipped or not, told apart by content, not by name).

    Returns (d0, ..., dk) uint8, writable. Labels files have magic 0x00000801 (1-D), image files
    0x00000803 (3-D); `ndim` (1 or 3) additionally demands one of the two. Raises MNISTFormatError
    naming the file for a bad magic number, a dtype byte other than 0x08 (unsigned byte), a length
    that does not match the header, or a corrupt gzip stream.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise MNISTFormatError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4:
        raise MNISTFormatError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise MNISTFormatError(f"{path}: not an IDX file (magic number 0x{raw[:4].hex()})")
    if raw[2] != 0x08:
        raise MNISTFormatError(
            f"{path}: IDX dtype byte is 0x{raw[2]:02x}, expected 0x08 (unsigned byte)"
        )
    dims_count = raw[3]
    allowed = (1, 3) if ndim is None else (ndim,)
    if dims_count not in allowed:
        wanted = " or ".join(f"0x0000080{d}" for d in allowed)
        raise MNISTFormatError(
            f"{path}: magic number 0x{raw[:4].hex()} has {dims_count} dimensions, expected {wanted}"
        )
    header = 4 + 4 * dims_count
    if len(raw) < header:
        raise MNISTFormatError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims_count, offset=4))
    expected = header + math.prod(shape)  # Python ints: a corrupt header cannot overflow
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "trailing bytes"
        raise MNISTFormatError(
            f"{path}: {kind}: header says {shape} -> {expected} bytes, file has {len(raw)}"
        )
    # The copy makes the array writable (frombuffer over bytes is read-only) and frees `raw`.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _idx_paths(directory: Path) -> dict[str, Path | None]:
    """Array name -> the IDX file in `directory` (gzipped preferred), or None if absent."""
    found = {}
    for key, (base, _) in IDX_FILES.items():
        candidates = [directory / (base + ".gz"), directory / base]
        found[key] = next((p for p in candidates if p.is_file()), None)
    return found


def _expected_names() -> str:
    names = ", ".join(base + "[.gz]" for base, _ in IDX_FILES.values())
    return f"{names} (or {NPZ_FILE} with x_train, y_train, x_test, y_test)"


def _load_dir(directory: Path, what: str) -> MNIST | None:
    """MNIST from the IDX files or mnist.npz in `directory`; None when neither is complete."""
    paths = _idx_paths(directory)
    if all(paths.values()):
        arrays = {key: read_idx(p, IDX_FILES[key][1]) for key, p in paths.items()}
        return _checked(arrays, paths, f"IDX files in {directory} ({what})")
    npz = directory / NPZ_FILE
    if npz.is_file():
        return _load_npz(npz, what)
    return None


def _load_npz(path: Path, what: str) -> MNIST:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # BadZipFile, OSError, EOFError, ValueError: all mean "not an npz"
        raise MNISTFormatError(f"{path}: unreadable npz ({type(exc).__name__}: {exc})") from None
    if not hasattr(archive, "files"):  # a plain .npy saved under the npz name
        raise MNISTFormatError(f"{path}: a single array, not an npz archive")
    with archive:
        missing = [key for key in IDX_FILES if key not in archive.files]
        if missing:
            raise MNISTFormatError(f"{path}: missing arrays {missing}; has {archive.files}")
        try:
            arrays = {key: archive[key] for key in IDX_FILES}
        except Exception as exc:  # a damaged member only shows when it is read
            raise MNISTFormatError(
                f"{path}: unreadable npz member ({type(exc).__name__}: {exc})"
            ) from None
    for key, arr in arrays.items():
        want_ndim = IDX_FILES[key][1]
        if arr.dtype != np.uint8 or arr.ndim != want_ndim:
            raise MNISTFormatError(
                f"{path}: {key} is {arr.dtype} {arr.shape}, expected uint8 "
                f"with {want_ndim} dimension(s)"
            )
    return _checked(arrays, {key: path for key in arrays}, f"{path} ({what})")


def _checked(arrays: dict, paths: dict, source: str) -> MNIST:
    """MNIST after checking counts, image sizes and label range; errors name the files."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise MNISTFormatError(
                f"{paths[f'x_{split}']} has {len(x)} images but "
                f"{paths[f'y_{split}']} has {len(y)} labels"
            )
        if y.size and y.max() >= NUM_CLASSES:
            raise MNISTFormatError(
                f"{paths[f'y_{split}']}: label {int(y.max())} outside 0..{NUM_CLASSES - 1}"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise MNISTFormatError(
            f"image sizes differ: {paths['x_train']} "
            f"{arrays['x_train'].shape[1:]}, {paths['x_test']} "
            f"{arrays['x_test'].shape[1:]}"
        )
    return MNIST(source=source, **arrays)


# ---- downloading ---------------------------------------------------------------------------------


def download_mnist(
    cache_dir=None,
    mirrors=MIRRORS,
    files=FILES,
    progress: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> dict[str, str]:
    """Download each of `files` (name -> SHA-256) missing from `cache_dir`, trying `mirrors` in order.

    Each file is streamed into a temporary file in `cache_dir` and moved into place with
    os.replace only after its checksum matched, so an interrupted or wrong download never leaves a
    file that a later load would trust. Returns {file name: URL} of the files fetched (empty when
    all were cached). Raises DownloadError listing every mirror's failure for the first file that
    no mirror could deliver.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fetched = {}
    for name, sha256 in files.items():
        target = cache_dir / name
        if target.is_file():
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                _fetch(url, target, sha256, progress, timeout)
            except (OSError, HTTPException, ValueError) as exc:  # URLError, timeouts: OSError
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            fetched[name] = url
            break
        else:
            raise DownloadError(f"could not download {name}: " + "; ".join(failures))
    return fetched


def _fetch(url: str, target: Path, sha256: str, progress: bool, timeout: float) -> None:
    """Stream `url` into `target` atomically, or raise and leave nothing behind."""
    from tqdm import tqdm  # only downloads need it

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=target.name,
                leave=False,
                disable=not progress,
            ) as bar:
                received = 0
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            # http.client's read(n) returns b"" on a dropped connection instead of raising.
            if total is not None and received != total:
                raise DownloadError(f"connection closed after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name says "complete"
        if digest.hexdigest() != sha256.lower():
            raise DownloadError(f"SHA-256 mismatch: got {digest.hexdigest()}, expected {sha256}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared $CONVBENCH_CACHE should be readable
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load_from_keras() -> MNIST | None:
    """MNIST from tf.keras.datasets (which keeps its own cache), or None without TensorFlow."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data()
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays = {key: np.asarray(value, dtype=np.uint8) for key, value in arrays.items()}
    source = "tf.keras.datasets.mnist.load_data()"
    return _checked(arrays, {key: f"{source} {key}" for key in arrays}, source)


def load_mnist(
    data_dir=None, cache_dir=None, download: bool = True, mirrors=MIRRORS, progress: bool = True
) -> MNIST:
    """MNIST from the first source that has it (see the module docstring for the order).

    Returns MNIST with x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test (10000, 28,
    28) uint8, y_test (10000,) uint8 and `source`. Raises FileNotFoundError naming the directory
    when `data_dir` / $MNIST_DIR lacks the files, MNISTFormatError (a ValueError) naming the file
    when a file is corrupt, and FileNotFoundError explaining how to provide the data when no
    source has it. With download=False neither the mirrors nor TensorFlow are tried.
    """
    given, what = data_dir, "data_dir"
    if given is None and os.environ.get("MNIST_DIR"):
        given, what = os.environ["MNIST_DIR"], "MNIST_DIR"
    if given is not None:
        directory = Path(given).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(
                f"MNIST directory {directory} ({what}) does not exist; expected {_expected_names()}"
            )
        data = _load_dir(directory, what)
        if data is None:
            missing = [
                IDX_FILES[key][0] + "[.gz]"
                for key, path in _idx_paths(directory).items()
                if path is None
            ]
            raise FileNotFoundError(
                f"MNIST directory {directory} ({what}) lacks "
                f"{', '.join(missing)}; expected {_expected_names()}"
            )
        return data

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if cache.is_dir():
        data = _load_dir(cache, "cache")
        if data is not None:
            return data
    if not download:
        raise FileNotFoundError(_how_to_provide(cache, mirrors, "download=False"))

    reasons = []
    try:
        # FILES is looked up now, not bound as a default, so tests can swap the checksum table.
        fetched = download_mnist(cache, mirrors, files=FILES, progress=progress)
    except OSError as exc:
        reasons.append(f"download failed: {exc}")
    else:
        data = _load_dir(cache, "cache")
        if data is not None:
            if fetched:
                mirrors_used = sorted({url.rsplit("/", 1)[0] + "/" for url in fetched.values()})
                data = MNIST(
                    data.x_train,
                    data.y_train,
                    data.x_test,
                    data.y_test,
                    f"IDX files downloaded from {', '.join(mirrors_used)} into {cache}",
                )
            return data
        reasons.append(f"the download left {cache} without the data")
    try:
        data = _load_from_keras()
    except Exception as exc:  # TensorFlow's own download or cache can fail in many ways
        reasons.append(f"tf.keras.datasets.mnist.load_data() failed: {type(exc).__name__}: {exc}")
    else:
        if data is not None:
            return data
        reasons.append("TensorFlow is not installed")
    raise FileNotFoundError(_how_to_provide(cache, mirrors, "; ".join(reasons)))


def _how_to_provide(cache: Path, mirrors, reason: str) -> str:
    return (
        f"MNIST not found ({reason}). Pass --data-dir DIR or set MNIST_DIR to a directory "
        f"holding {_expected_names()}, or put those files in {cache} (set CONVBENCH_CACHE to "
        f"change it), or allow the download from {', '.join(mirrors)}"
    )


# ---- arrays for training -------------------------------------------------------------------------


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H, W, 1), a view of `x` (same dtype)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be (N, H, W) images, got shape {x.shape}")
    return x[..., np.newaxis]


def scale(x_uint8: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1) uint8 -> (N, H, W, 1) `dtype` in [0, 1] (pixel / 255), a new array."""
    x_uint8 = np.asarray(x_uint8)
    if x_uint8.dtype != np.uint8:
        raise ValueError(f"x_uint8 must be uint8 pixels, got {x_uint8.dtype}")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating type, got {np.dtype(dtype)}")
    if x_uint8.ndim == 3:
        x_uint8 = to_nhwc(x_uint8)
    elif x_uint8.ndim != 4:
        raise ValueError(f"x_uint8 must be (N, H, W) or (N, H, W, C), got shape {x_uint8.shape}")
    out = x_uint8.astype(dtype)
    out /= out.dtype.type(255)  # division, not * (1/255): 255 maps to exactly 1.0
    return out


def standardize_stats(x_train: np.ndarray) -> tuple[float, float]:
    """(mean, std) over every element of `x_train` (any shape), as Python floats.

    Accumulates in float64 so 47 million float32 pixels do not drift. Apply the training set's
    statistics to the test set too.
    """
    x_train = np.asarray(x_train)
    if x_train.size == 0:
        raise ValueError("x_train is empty: no statistics to compute")
    mean = float(x_train.mean(dtype=np.float64))
    std = float(x_train.std(dtype=np.float64))
    if not std > 0:
        raise ValueError(f"x_train has standard deviation {std}: cannot standardize by it")
    return mean, std


def standardize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std for floating `x` of any shape; a new array of x's dtype."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be floating (use scale() first), got {x.dtype}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    kind = x.dtype.type
    return (x - kind(mean)) / kind(std)


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES, dtype=np.float32) -> np.ndarray:
    """(N,) integer labels in [0, num_classes) -> (N, num_classes) `dtype` of zeros and ones."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"labels must lie in [0, {num_classes}): labels[{i}] = {labels[i]} "
            f"({int(bad.sum())} out of range)"
        )
    out = np.zeros((len(labels), num_classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def subset(x: np.ndarray, y: np.ndarray, limit: int | None, name: str = "limit"):
    """The first `limit` items of x (N, ...) and y (N, ...), as views; None (or limit >= N) = all.

    `name` is how the caller's user knows the limit (e.g. "--train-limit"), for the error.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if limit is None:
        return x, y
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise ValueError(f"{name} must be a positive integer, got {limit!r}")
    return x[:limit], y[:limit]


def num_batches(n: int, batch_size: int) -> int:
    """How many batches iterate_batches yields for n items: ceil(n / batch_size)."""
    _check_batch_size(batch_size)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return -(-n // batch_size)


def _check_batch_size(batch_size) -> None:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng=None):
    """Yield (xb, yb) batches covering x (N, ...) and y (N, ...) once, the last one partial.

    With rng (a numpy.random.Generator) the items come in the order of rng.permutation(N), one
    draw per call, so the same seed gives the same batches; batches are then copies. With
    rng=None the order is the stored one and batches are views. Arguments are checked at the
    call, not at the first next().
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    _check_batch_size(batch_size)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    order = None if rng is None else rng.permutation(len(x))
    return _batches(x, y, batch_size, order)


def _batches(x, y, batch_size, order):
    for start in range(0, len(x), batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


# ---- augmentation --------------------------------------------------------------------------------


def _check_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be (N, H, W, C) floating, got {x.dtype} {x.shape}")
    return x


def transform_batch(x: np.ndarray, shifts, degrees) -> np.ndarray:
    """Rotate each image about its centre by degrees[i], then shift it by shifts[i] = (dy, dx) px.

    x: (N, H, W, C) float; shifts: (N, 2) (positive dy moves content down, dx right); degrees: (N,).
    Returns (N, H, W, C) of x's dtype. Each output pixel is sampled bilinearly from the input at
    the inverse-mapped position, all samples at once by fancy indexing; positions outside the
    image read zero. Integer shifts without rotation move pixels exactly.
    """
    x = _check_images(x)
    n, h, w, _ = x.shape
    shifts = np.asarray(shifts, dtype=np.float64)
    theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must be ({n}, 2), got {shifts.shape}")
    if theta.shape != (n,):
        raise ValueError(f"degrees must be ({n},), got {theta.shape}")

    cy, cx = (h - 1) / 2, (w - 1) / 2
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # (H, W)
    # Output pixel relative to the centre, shift undone: (N, H, W).
    out_y = rows - cy - shifts[:, 0, None, None]
    out_x = cols - cx - shifts[:, 1, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    # The inverse rotation (the transpose) tells where in the input each output pixel comes from.
    src_y = cos * out_y + sin * out_x + cy
    src_x = -sin * out_y + cos * out_x + cx

    y0, x0 = np.floor(src_y), np.floor(src_x)
    wy, wx = src_y - y0, src_x - x0
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for dy, weight_y in ((0, 1 - wy), (1, wy)):
        for dx, weight_x in ((0, 1 - wx), (1, wx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            weight = (weight_y * weight_x * inside).astype(x.dtype)
            # Clipped indices keep the gather legal; their weight is zero when they were outside.
            out += weight[..., None] * x[batch, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    return out


def augment_batch(
    x: np.ndarray, rng: np.random.Generator, max_shift: int = 2, max_degrees: float = 10.0
) -> np.ndarray:
    """Random shift and rotation per image, for training batches only.

    x: (N, H, W, C) float -> (N, H, W, C) same dtype, a new array. Per image: integer shifts dy, dx
    uniform in [-max_shift, max_shift] and a rotation uniform in [-max_degrees, max_degrees]
    degrees (drawn from rng in that order, so the same seed gives the same batch); zero fill
    where the image moved away. See transform_batch.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    if not max_degrees >= 0:
        raise ValueError(f"max_degrees must be non-negative, got {max_degrees!r}")
    # Checked before drawing, so a bad call leaves rng's stream untouched.
    n = len(_check_images(x))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    degrees = rng.uniform(-max_degrees, max_degrees, size=n)
    return transform_batch(x, shifts, degrees)
