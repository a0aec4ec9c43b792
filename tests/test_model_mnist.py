"""model.mnist: MNIST sources (directory, env, cache, loopback download) and IDX errors. Everything
but the two real-MNIST tests uses small synthetic files in tmp_path."""

import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np
import pytest

from model import mnist as data
from model.mnist import (
    FILES,
    MNIST,
    DownloadError,
    MNISTFormatError,
    default_cache_dir,
    download_mnist,
    load_mnist,
    read_idx,
)

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


# ---- helpers -------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000080<ndim>, big-endian dims, the bytes."""
    return (
        bytes([0, 0, 0x08, arr.ndim])
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


def synthetic_arrays(seed=0, n_train=6, n_test=4):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def synthetic_files(arrays, gz=True) -> dict:
    """File name -> file bytes, with the canonical MNIST names."""
    files = {}
    for key, (base, _) in data.IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        files[base + ".gz" if gz else base] = gzip.compress(raw) if gz else raw
    return files


def write_files(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)


def sha256s(files) -> dict:
    return {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}


def assert_same(mnist: MNIST, arrays):
    for key, expected in arrays.items():
        got = getattr(mnist, key)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.fixture
def no_env(monkeypatch):
    """No MNIST_DIR (the test run usually sets it) and no CONVBENCH_CACHE; TensorFlow's fallback
    reports "not installed" so nothing reaches the network or ~/.keras."""
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.delenv("CONVBENCH_CACHE", raising=False)
    monkeypatch.setattr(data, "_load_from_keras", lambda: None)


# ---- loopback HTTP server ------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, mode = route
        self.send_response(200)
        # "drop": promise more than is sent, send half, then close the connection.
        promised = len(body) + 1000 if mode == "drop" else len(body)
        self.send_header("Content-Length", str(promised))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mode == "drop" else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve({path: (bytes, "ok" | "drop")}) -> (base URL, stop()); all servers stop at teardown."""
    servers = []

    def start(routes):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.routes = routes
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append(server)

        def stop():
            server.shutdown()
            server.server_close()
            servers.remove(server)

        return f"http://127.0.0.1:{server.server_address[1]}", stop

    yield start
    for server in list(servers):
        server.shutdown()
        server.server_close()


def dead_mirror(serve) -> str:
    """A loopback URL whose port was just closed: connecting is refused."""
    url, stop = serve({})
    stop()
    return url + "/"


# ---- real MNIST ----------------------------------------------------------------------------------


def check_real(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.y_train.shape == (60000,) and mnist.y_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28) and mnist.x_test.dtype == np.uint8
    assert mnist.y_test.shape == (10000,) and mnist.y_test.dtype == np.uint8
    for labels in (mnist.y_train, mnist.y_test):
        np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    assert mnist.x_train.max() == 255 and mnist.x_train.min() == 0


def test_real_mnist_from_data_dir(mnist_dir):
    mnist = load_mnist(mnist_dir, download=False)
    check_real(mnist)
    assert str(mnist_dir) in mnist.source and "data_dir" in mnist.source
    assert "60000" in repr(mnist)


def test_real_mnist_from_env(mnist_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    mnist = load_mnist(cache_dir=tmp_path / "unused", download=False)
    check_real(mnist)
    assert str(mnist_dir) in mnist.source and "MNIST_DIR" in mnist.source
    assert not (tmp_path / "unused").exists()


# ---- reading synthetic files ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_synthetic_idx_directory(tmp_path, gz, no_env):
    arrays = synthetic_arrays()
    write_files(tmp_path, synthetic_files(arrays, gz=gz))
    mnist = load_mnist(tmp_path, download=False)
    assert_same(mnist, arrays)
    assert str(tmp_path) in mnist.source
    mnist.x_train[0, 0, 0] = 1  # writable, not a read-only view of the file's bytes


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "images").write_bytes(idx_bytes(images))
    (tmp_path / "labels.gz").write_bytes(gzip.compress(idx_bytes(np.array([3, 1, 4], np.uint8))))
    np.testing.assert_array_equal(read_idx(tmp_path / "images"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz", ndim=1), [3, 1, 4])
    # Gzip is told by content: a decompressed file still named .gz reads too.
    (tmp_path / "saved-by-browser.gz").write_bytes(idx_bytes(images))
    np.testing.assert_array_equal(read_idx(tmp_path / "saved-by-browser.gz"), images)


def test_keras_npz(tmp_path, no_env):
    arrays = synthetic_arrays(seed=1)
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)
    mnist = load_mnist(tmp_path, download=False)
    assert_same(mnist, arrays)
    assert "mnist.npz" in mnist.source


def test_npz_missing_key_names_file(tmp_path, no_env):
    arrays = synthetic_arrays()
    del arrays["y_test"]
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(MNISTFormatError, match=r"mnist\.npz.*y_test"):
        load_mnist(tmp_path, download=False)


def test_npz_garbage_names_file(tmp_path, no_env):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MNISTFormatError, match=r"mnist\.npz"):
        load_mnist(tmp_path, download=False)


# ---- corrupt files -------------------------------------------------------------------------------


def _corrupt(kind: str) -> bytes:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    if kind == "magic":
        return b"\x12\x34" + raw[2:]
    if kind == "dtype":
        return raw[:2] + b"\x0d" + raw[3:]  # 0x0D is float32 in the IDX spec
    if kind == "ndim":
        return raw[:3] + b"\x02" + raw[4:]
    if kind == "truncated":
        return raw[:-10]
    if kind == "trailing":
        return raw + b"\x00"
    if kind == "header":
        return raw[:9]
    if kind == "empty":
        return b""
    raise AssertionError(kind)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize(
    "kind, message",
    [
        ("magic", "not an IDX file"),
        ("dtype", "dtype byte is 0x0d"),
        ("ndim", "dimensions"),
        ("truncated", "truncated"),
        ("trailing", "trailing bytes"),
        ("header", "truncated IDX header"),
        ("empty", "too short"),
    ],
)
def test_corrupt_idx_names_file(tmp_path, kind, message, gz):
    path = tmp_path / f"{IMAGES}.gz"
    raw = _corrupt(kind)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(MNISTFormatError, match=message) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_absurd_header_is_truncated_not_overflow(tmp_path):
    # 2**32-1 cubed overflows int64; the length check must still see a short file.
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\xff" * 12)
    with pytest.raises(MNISTFormatError, match="truncated"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_bad_gzip_names_file(tmp_path, damage):
    packed = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10))))
    if damage == "cut":
        packed = packed[: len(packed) // 2]  # EOFError inside gzip
    else:
        packed[-8] ^= 0xFF  # CRC mismatch: BadGzipFile
    path = tmp_path / f"{IMAGES}.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(MNISTFormatError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_load_reports_corrupt_file_not_missing(tmp_path, no_env):
    files = synthetic_files(synthetic_arrays())
    files[f"{LABELS}.gz"] = files[f"{LABELS}.gz"][:20]
    write_files(tmp_path, files)
    with pytest.raises(MNISTFormatError, match=LABELS):
        load_mnist(tmp_path, download=False)


def test_swapped_files_rejected(tmp_path, no_env):
    files = synthetic_files(synthetic_arrays())
    files[f"{IMAGES}.gz"], files[f"{LABELS}.gz"] = files[f"{LABELS}.gz"], files[f"{IMAGES}.gz"]
    write_files(tmp_path, files)
    with pytest.raises(MNISTFormatError, match=r"expected 0x00000803"):
        load_mnist(tmp_path, download=False)


def test_count_mismatch_names_both_files(tmp_path, no_env):
    arrays = synthetic_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    write_files(tmp_path, synthetic_files(arrays))
    with pytest.raises(MNISTFormatError, match=rf"{IMAGES}.*6 images.*{LABELS}.*5 labels"):
        load_mnist(tmp_path, download=False)


def test_label_out_of_range(tmp_path, no_env):
    arrays = synthetic_arrays()
    arrays["y_test"][2] = 10
    write_files(tmp_path, synthetic_files(arrays))
    with pytest.raises(MNISTFormatError, match=r"t10k-labels.*label 10"):
        load_mnist(tmp_path, download=False)


# ---- explicit directories never fall back --------------------------------------------------------


@pytest.mark.parametrize("via_env", [False, True], ids=["argument", "MNIST_DIR"])
@pytest.mark.parametrize("exists", [True, False], ids=["empty-dir", "no-dir"])
def test_explicit_dir_without_files(tmp_path, monkeypatch, no_env, via_env, exists):
    def no_download(*args, **kwargs):
        raise AssertionError("an explicit data_dir must not trigger a download")

    monkeypatch.setattr(data, "download_mnist", no_download)
    directory = tmp_path / "mnist"
    if exists:
        directory.mkdir()
        (directory / f"{IMAGES}.gz").write_bytes(b"")  # one of four is not enough
    if via_env:
        monkeypatch.setenv("MNIST_DIR", str(directory))
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(None if via_env else directory, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(directory) in message and ("MNIST_DIR" if via_env else "data_dir") in message
    for name in ("t10k-labels-idx1-ubyte", "mnist.npz"):
        assert message.count(name) == 1  # each file named once
    if exists:  # says what is missing (the file present is not listed), not just what is expected
        assert "lacks train-labels-idx1-ubyte[.gz], t10k-images" in message
        assert "train-images" not in message
    else:
        assert "train-images-idx3-ubyte" in message


def test_explicit_dir_that_is_a_file(tmp_path, no_env):
    (tmp_path / "mnist.npz").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"mnist\.npz \(--data-dir\) is a file, not a dir"):
        load_mnist(tmp_path / "mnist.npz", download=False, data_dir_name="--data-dir")


@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(range(256)) * 8, "not a valid .npz archive"),
        (b"", "not a valid .npz archive"),
        (b"\x93NUMPY\x01\x00", "a single .npy array"),
    ],
    ids=["random-bytes", "empty", "npy"],
)
def test_npz_that_is_not_an_archive_says_so(tmp_path, no_env, content, message):
    (tmp_path / "mnist.npz").write_bytes(content)
    with pytest.raises(MNISTFormatError, match=message) as info:
        load_mnist(tmp_path, download=False)
    assert "pickle" not in str(info.value)


# ---- the downloader ------------------------------------------------------------------------------


def test_download_good_files(tmp_path, serve):
    files = synthetic_files(synthetic_arrays())
    url, _ = serve({f"/mnist/{name}": (content, "ok") for name, content in files.items()})
    cache = tmp_path / "cache"
    umask = os.umask(0o027)  # the files get the user's usual mode, not mkstemp's 0600
    try:
        fetched = download_mnist(cache, [url + "/mnist/"], files=sha256s(files), progress=False)
    finally:
        os.umask(umask)
    assert fetched == {name: f"{url}/mnist/{name}" for name in files}
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    for name, content in files.items():
        assert (cache / name).read_bytes() == content
        assert (cache / name).stat().st_mode & 0o777 == 0o640
    # Everything cached: nothing fetched again.
    assert download_mnist(cache, [url + "/mnist/"], files=sha256s(files), progress=False) == {}


def test_download_checksum_mismatch_leaves_nothing(tmp_path, serve):
    name = f"{LABELS}.gz"
    url, _ = serve({f"/{name}": (b"not what was promised", "ok")})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="SHA-256 mismatch") as info:
        download_mnist(cache, [url], files={name: "0" * 64}, progress=False)
    assert name in str(info.value)
    assert list(cache.iterdir()) == []


def test_download_dropped_connection_leaves_nothing(tmp_path, serve):
    name = f"{IMAGES}.gz"
    content = synthetic_files(synthetic_arrays())[name]
    url, _ = serve({f"/{name}": (content, "drop")})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="connection closed|IncompleteRead"):
        download_mnist(cache, [url], files=sha256s({name: content}), progress=False, timeout=5)
    assert list(cache.iterdir()) == []


def test_download_falls_back_to_next_mirror(tmp_path, serve):
    files = synthetic_files(synthetic_arrays())
    wrong = {f"/{name}": (b"corrupted copy", "ok") for name in files}
    good = {f"/{name}": (content, "ok") for name, content in files.items()}
    bad_url, _ = serve(wrong)
    good_url, _ = serve(good)
    cache = tmp_path / "cache"
    mirrors = [dead_mirror(serve), bad_url + "/", good_url + "/"]
    fetched = download_mnist(cache, mirrors, files=sha256s(files), progress=False, timeout=5)
    assert all(u.startswith(good_url) for u in fetched.values()) and len(fetched) == 4
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)


def test_download_all_mirrors_fail_lists_each(tmp_path, serve):
    files = synthetic_files(synthetic_arrays())
    dead = dead_mirror(serve)
    url, _ = serve({})  # answers 404
    with pytest.raises(DownloadError) as info:
        download_mnist(tmp_path, [dead, url], files=sha256s(files), progress=False, timeout=5)
    message = str(info.value)
    assert dead in message and "404" in message
    assert list(tmp_path.iterdir()) == []


# ---- load_mnist: download, then cache ------------------------------------------------------------


def test_load_downloads_then_reads_cache_offline(tmp_path, serve, monkeypatch, no_env):
    arrays = synthetic_arrays(seed=2)
    files = synthetic_files(arrays)
    monkeypatch.setattr(data, "FILES", sha256s(files))
    url, stop = serve({f"/{name}": (content, "ok") for name, content in files.items()})
    cache = tmp_path / "cache"
    first = load_mnist(cache_dir=cache, mirrors=[url + "/"], progress=False)
    assert_same(first, arrays)
    assert "downloaded" in first.source and url in first.source and str(cache) in first.source

    stop()  # the network is gone; the cache must be enough
    second = load_mnist(cache_dir=cache, mirrors=[url + "/"], progress=False)
    assert_same(second, arrays)
    assert "cache" in second.source and "downloaded" not in second.source

    # The cache via $CONVBENCH_CACHE, with downloads off.
    monkeypatch.setenv("CONVBENCH_CACHE", str(cache))
    assert default_cache_dir() == cache
    assert_same(load_mnist(download=False), arrays)


def test_load_nowhere_explains_how(tmp_path, serve, no_env):
    dead = dead_mirror(serve)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(cache_dir=tmp_path / "cache", mirrors=[dead], progress=False)
    message = str(info.value)
    for needle in (
        "--data-dir",
        "MNIST_DIR",
        "train-images-idx3-ubyte",
        "mnist.npz",
        dead,
        "TensorFlow is not installed",
        str(tmp_path / "cache"),
    ):
        assert needle in message
    assert "\n" not in message


def test_load_without_download_touches_no_network(tmp_path, monkeypatch, no_env):
    def no_download(*args, **kwargs):
        raise AssertionError("download=False must not download")

    monkeypatch.setattr(data, "download_mnist", no_download)
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_mnist(cache_dir=tmp_path, download=False)


def test_keras_fallback_is_used(tmp_path, serve, monkeypatch, no_env):
    arrays = synthetic_arrays(seed=3)
    fake = MNIST(source="tf.keras.datasets.mnist.load_data()", **arrays)
    monkeypatch.setattr(data, "_load_from_keras", lambda: fake)
    mnist = load_mnist(cache_dir=tmp_path / "cache", mirrors=[dead_mirror(serve)], progress=False)
    assert mnist is fake


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CONVBENCH_CACHE", raising=False)
    assert default_cache_dir().parts[-3:] == (".cache", "convbench", "mnist")
    monkeypatch.setenv("CONVBENCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_files_table():
    assert sorted(FILES) == sorted(base + ".gz" for base, _ in data.IDX_FILES.values())
    assert all(len(sha) == 64 and int(sha, 16) >= 0 for sha in FILES.values())
