"""MNIST on disk: find it, download it (checked against SHA-256), read it.

    >>> from model.mnist import load_mnist
    >>> data = load_mnist()   # a directory, else $MNIST_DIR, the cache, a download
    >>> data.x_train.shape, data.x_train.dtype, data.y_train.shape
    ((60000, 28, 28), dtype('uint8'), (60000,))

Where load_mnist looks, in order (the first that has the data wins):
  1. `data_dir`, else $MNIST_DIR: the four IDX files (gzipped or not) or a Keras-style mnist.npz.
     A directory given this way must hold the data: it is an error, not a reason to download.
  2. the cache directory: `cache_dir`, else $CONVBENCH_CACHE, else ~/.cache/convbench/mnist.
  3. a download from MIRRORS into the cache, each file checked against its SHA-256 in FILES.
  4. tf.keras.datasets.mnist.load_data(), if TensorFlow is installed.
Arrays come back as they are stored: images (N, 28, 28) uint8, labels (N,) uint8.
`model.batches` makes the float NHWC arrays the network trains on.
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

from .atomic import default_file_mode
from .npyfiles import not_an_npz
from .tensorflow_import import import_tensorflow

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
    problem = not_an_npz(path)
    if problem:
        raise MNISTFormatError(f"{path}: {problem}")
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
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600: a shared cache must be readable
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
        tf = import_tensorflow()
    except ImportError:
        return None
    (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data()
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays = {key: np.asarray(value, dtype=np.uint8) for key, value in arrays.items()}
    source = "tf.keras.datasets.mnist.load_data()"
    return _checked(arrays, {key: f"{source} {key}" for key in arrays}, source)


def load_mnist(
    data_dir=None,
    cache_dir=None,
    download: bool = True,
    mirrors=MIRRORS,
    progress: bool = True,
    data_dir_name: str = "data_dir",
) -> MNIST:
    """MNIST from the first source that has it (see the module docstring for the order).

    Returns MNIST with x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test (10000, 28,
    28) uint8, y_test (10000,) uint8 and `source`. Raises FileNotFoundError naming the directory
    when `data_dir` / $MNIST_DIR lacks the files, MNISTFormatError (a ValueError) naming the file
    when a file is corrupt, and FileNotFoundError explaining how to provide the data when no
    source has it. With download=False neither the mirrors nor TensorFlow are tried.
    `data_dir_name` names `data_dir` in errors (a CLI passes its option, "--data-dir").
    """
    given, what = data_dir, data_dir_name
    if given is None and os.environ.get("MNIST_DIR"):
        given, what = os.environ["MNIST_DIR"], "MNIST_DIR"
    if given is not None:
        directory = Path(given).expanduser()
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(
                f"MNIST directory {directory} ({what}) is a file, not a directory; give the "
                f"directory that holds {_expected_names()}"
            )
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
                f"MNIST directory {directory} ({what}) lacks {', '.join(missing)} (it needs all "
                f"four IDX files, gzipped or not, or {NPZ_FILE} with {', '.join(IDX_FILES)})"
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
