"""model.predict: image loading (MNIST-style normalisation), preprocessing, and the CLI.

The networks here are real: python -m model.train runs on a synthetic MNIST-format directory for
one epoch (with and without --standardize), and the predict CLI reads the checkpoints it wrote."""

import gzip
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from model_helpers import separable_data, write_mnist_dir
from PIL import Image

from model import predict, train
from model.network import build_network, load_network, read_checkpoint
from model.predict import format_prediction, load_image, main, predict_files, preprocess

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<path>.+): (?P<digit>\d) \(p=(?P<p>[01]\.\d{3})\)$")


def dark_bar_on_light(height=60, width=100):
    """uint8 (height, width): a vertical black bar (a "1") on white."""
    pixels = np.full((height, width), 255, np.uint8)
    pixels[height // 6 : height - height // 6, width // 2 - 5 : width // 2 + 5] = 0
    return pixels


def save_png(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


def centre_of_mass(img):
    total = img.sum()
    ys, xs = np.indices(img.shape)
    return (ys * img).sum() / total, (xs * img).sum() / total


def bbox(img, level=0.5):
    rows = np.flatnonzero((img > level).any(axis=1))
    cols = np.flatnonzero((img > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"plain": ..., "standardized": ...}: last.npz of a one-epoch `python -m model.train` run on
    synthetic MNIST files, without and with --standardize."""
    root = tmp_path_factory.mktemp("trained")
    (root / "mnist").mkdir()
    data_dir = write_mnist_dir(root / "mnist", n_train=320, n_test=64)
    paths = {}
    for name, extra in (("plain", []), ("standardized", ["--standardize"])):
        argv = ["--data-dir", data_dir, "--epochs", 1, "--batch-size", 32, "--no-progress"]
        argv += ["--out", root / name, *extra]
        assert train.main([str(a) for a in argv]) == 0
        paths[name] = root / name / "last.npz"
    return paths


def test_train_saves_the_standardisation_it_applied(checkpoints):
    assert read_checkpoint(checkpoints["plain"])[0]["standardize"] is None
    mean, std = read_checkpoint(checkpoints["standardized"])[0]["standardize"]
    x, _ = separable_data(320, seed=len("train"))
    pixels = (np.clip(x, 0, 1) * 255).astype(np.uint8) / np.float32(255)
    assert mean == pytest.approx(pixels.mean(), rel=1e-5)
    assert std == pytest.approx(pixels.std(), rel=1e-5)


# ---- load_image ------------------------------------------------------------------------------


def test_dark_on_light_png_becomes_light_on_dark(tmp_path):
    img = load_image(save_png(tmp_path / "d.png", dark_bar_on_light(60, 60)))
    assert img.shape == (28, 28) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == pytest.approx(1.0, abs=1e-6)
    assert img.mean() < 0.5
    assert img[0, 0] == 0 and img[14, 14] > 0.9  # black corner, white stroke in the middle


def test_resizing_keeps_aspect_and_centres_like_mnist(tmp_path):
    # 100 wide x 60 tall; the bar is 40 tall x 10 wide, off to one side of nothing in particular.
    img = load_image(save_png(tmp_path / "wide.png", dark_bar_on_light(60, 100)))
    assert img.shape == (28, 28)
    height, width = bbox(img)
    assert height == 20 and 4 <= width <= 6  # longer side fitted to 20, aspect 4:1 kept
    cy, cx = centre_of_mass(img)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75  # where MNIST's centres of mass are


def test_off_centre_digit_is_moved_to_the_centre(tmp_path):
    pixels = np.zeros((80, 80), np.uint8)
    pixels[2:30, 50:75] = 255  # white blob in the top-right corner
    img = load_image(save_png(tmp_path / "corner.png", pixels))
    cy, cx = centre_of_mass(img)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75
    assert max(bbox(img)) == 20


def test_light_on_dark_is_not_inverted_and_mnist_sized_digit_survives(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # already 20 tall and centred
    img = load_image(save_png(tmp_path / "mnist_like.png", digit))
    assert np.abs(img - digit / 255).mean() < 0.05


def test_rgb_matches_grayscale(tmp_path):
    gray = dark_bar_on_light(60, 100)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_allclose(
        load_image(save_png(tmp_path / "rgb.png", rgb)),
        load_image(save_png(tmp_path / "gray.png", gray)),
        atol=1e-6,
    )


def test_coloured_ink_on_white(tmp_path):
    rgb = np.full((50, 50, 3), 255, np.uint8)
    rgb[10:40, 20:28] = (20, 40, 200)  # blue pen
    img = load_image(save_png(tmp_path / "blue.png", rgb))
    assert img.mean() < 0.5 and img[14, 14] > 0.9


@pytest.mark.parametrize("ink", [0, 255])
def test_rgba_digit_on_transparent_canvas(tmp_path, ink):
    """Black or white strokes on a transparent canvas both come out white on black."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255 - ink  # invisible background colour: the opposite
    rgba[8:56, 28:36, :3] = ink
    rgba[8:56, 28:36, 3] = 255
    img = load_image(save_png(tmp_path / "rgba.png", rgba))
    assert img[0, 0] == 0 and img[14, 14] > 0.9 and img.mean() < 0.5


def test_jpeg_and_palette_images(tmp_path):
    gray = dark_bar_on_light(60, 60)
    Image.fromarray(gray).save(tmp_path / "d.jpg", quality=90)
    Image.fromarray(gray).convert("P").save(tmp_path / "d.gif")
    reference = load_image(save_png(tmp_path / "d.png", gray))
    for name in ("d.jpg", "d.gif"):
        assert np.abs(load_image(tmp_path / name) - reference).mean() < 0.08


def test_sixteen_bit_png_is_not_clipped(tmp_path):
    pixels = dark_bar_on_light(60, 60).astype(np.uint16) * 257
    Image.fromarray(pixels).save(tmp_path / "d16.png")
    reference = load_image(save_png(tmp_path / "d8.png", dark_bar_on_light(60, 60)))
    np.testing.assert_allclose(load_image(tmp_path / "d16.png"), reference, atol=0.02)


def test_forced_inversion(tmp_path):
    light_on_dark = 255 - dark_bar_on_light(60, 60)
    path = save_png(tmp_path / "lod.png", light_on_dark)
    assert load_image(path, invert=False)[14, 14] > 0.9
    # Forced inversion makes the background white and the bar black; the "digit" is then the
    # whole white page, scaled into the 20x20 box.
    forced = load_image(path, invert=True)
    assert forced[14, 14] < 0.1 and forced[4:24, 4:24].mean() > 0.5


def test_blank_image_gives_zeros(tmp_path):
    img = load_image(save_png(tmp_path / "blank.png", np.full((40, 40), 255, np.uint8)))
    assert img.shape == (28, 28) and not img.any()


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255), (np.float32, 1.0), (np.float64, 255.0)])
def test_npy_input(tmp_path, dtype, scale):
    rng = np.random.default_rng(0)
    unit = np.zeros((28, 28))
    unit[5:20, 10:14] = rng.random((15, 4))
    np.save(tmp_path / "x.npy", (unit * scale).astype(dtype))
    img = load_image(tmp_path / "x.npy")
    assert img.shape == (28, 28) and img.dtype == np.float32
    np.testing.assert_allclose(img, unit, atol=1 / 255 if dtype == np.uint8 else 1e-6)


def test_npy_with_channel_axis_and_light_background(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((28, 28, 1), np.float32))
    assert not load_image(tmp_path / "x.npy").any()  # white page -> inverted to black


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not an image", "cannot read image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "cannot read image"),  # truncated PNG
    ],
)
def test_unreadable_image_names_the_file(tmp_path, content, message):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{message}.*broken.png"):
        load_image(path)


def png_claiming_size(path, width, height):
    """A small PNG whose header says width x height: what Pillow checks before decoding."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"IHDR")
    data[at + 4 : at + 12] = struct.pack(">II", width, height)
    data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_is_one_clear_error(tmp_path, capsys, checkpoints):
    path = png_claiming_size(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ValueError, match=r"huge.png' is too large to read safely"):
        load_image(path)
    with pytest.raises(SystemExit) as info:
        main(["--checkpoint", str(checkpoints["plain"]), str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "I;16"])
def test_large_image_is_shrunk_on_load_quietly(tmp_path, monkeypatch, mode):
    side = 3000
    pixels = np.kron(dark_bar_on_light(60, 100), np.ones((side // 100, side // 100), np.uint8))
    image = Image.fromarray(pixels).convert(mode)
    image.save(tmp_path / "big.png")
    # between Pillow's warning and its refusal, as a 10000 x 10000 photo is at the default limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels.size // 2 + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gray = predict._read_pixels(tmp_path / "big.png")
    assert max(gray.shape) < 2 * predict.LOAD_SIDE and gray.shape[1] / gray.shape[0] == 100 / 60
    small = tmp_path / "small.png"
    save_png(small, dark_bar_on_light())
    np.testing.assert_allclose(load_image(tmp_path / "big.png"), load_image(small), atol=0.1)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((28, 27)), r"\(28, 28\).*\(28, 27\)"),
        (np.zeros((2, 28, 28)), r"\(2, 28, 28\)"),
        (np.array(["a"] * 784).reshape(28, 28), "not numbers"),
        (np.full((28, 28), np.nan), "NaN"),
    ],
)
def test_bad_npy_names_the_file(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=f"bad.npy.*{message}|{message}.*bad.npy"):
        load_image(tmp_path / "bad.npy")


def test_corrupt_npy_names_the_file(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        load_image(tmp_path / "bad.npy")


# ---- preprocess / predict_files --------------------------------------------------------------


def test_preprocess_shape_dtype_and_standardisation(checkpoints):
    img = np.linspace(0, 1, 784, dtype=np.float32).reshape(28, 28)
    plain = preprocess(img, build_network("small", dtype="float64"))
    assert plain.shape == (1, 28, 28, 1) and plain.dtype == np.float64
    np.testing.assert_array_equal(plain[0, ..., 0], img)
    np.testing.assert_array_equal(
        preprocess(img, load_network(checkpoints["plain"]))[0, ..., 0], img
    )

    net = load_network(checkpoints["standardized"])
    mean, std = read_checkpoint(checkpoints["standardized"])[0]["standardize"]
    x = preprocess(np.stack([img, img]), net)
    assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[1, ..., 0], (img - mean) / std, rtol=1e-5, atol=1e-6)


def test_preprocess_rejects_bad_shapes():
    with pytest.raises(ValueError, match="28, 28"):
        preprocess(np.zeros((28, 20)), build_network("small"))


def test_predict_files_ranks_top_k(tmp_path, checkpoints, monkeypatch):
    paths = [save_png(tmp_path / f"{i}.png", dark_bar_on_light()) for i in range(2)]
    net = load_network(checkpoints["plain"])
    batches = []
    original = net.predict_proba
    monkeypatch.setattr(net, "predict_proba", lambda x: batches.append(x.shape) or original(x))
    results = predict_files(net, paths, top=3)
    assert batches == [(2, 28, 28, 1)]  # one batch for all files
    assert [path for path, _ in results] == paths
    probs = original(preprocess(np.stack([load_image(p) for p in paths]), net))
    for (_, ranked), p in zip(results, probs):
        assert [digit for digit, _ in ranked] == list(np.argsort(-p, kind="stable")[:3])
        assert [q for _, q in ranked] == pytest.approx(sorted(p, reverse=True)[:3])
    ((digit, p),) = predict_files(net, paths[:1])[0][1]
    assert digit == results[0][1][0][0] and p == pytest.approx(results[0][1][0][1], rel=1e-5)
    with pytest.raises(ValueError, match="--top"):
        predict_files(net, paths, top=11)


def test_format_prediction():
    assert format_prediction("digit.png", [(7, 0.98734)]) == "digit.png: 7 (p=0.987)"
    assert (
        format_prediction("a/b.png", [(7, 0.9), (1, 0.05)]) == "a/b.png: 7 (p=0.900), 1 (p=0.050)"
    )


# ---- CLI: train -> checkpoint -> predict ----------------------------------------------------


def mnist_like_npys(directory, n=10):
    """n synthetic test digits (uint8 (28, 28) .npy files, as MNIST stores them) and labels."""
    x, y = separable_data(n, seed=99)
    paths = []
    for i, image in enumerate((np.clip(x[..., 0], 0, 1) * 255).astype(np.uint8)):
        paths.append(directory / f"digit{i}.npy")
        np.save(paths[-1], image)
    return paths, y


@pytest.mark.parametrize("name", ["plain", "standardized"])
def test_cli_gives_the_trained_networks_answer(tmp_path, checkpoints, capsys, name):
    """The CLI's digit and probability for each file are the network's own on the input it was
    trained on (pixels / 255, standardised with the stored [mean, std] when it was), and the
    one-epoch network gets the synthetic digits right."""
    paths, labels = mnist_like_npys(tmp_path)
    assert main(["--checkpoint", str(checkpoints[name]), *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    matches = [LINE.match(line) for line in lines]
    assert len(lines) == len(paths) and all(matches), lines
    assert [m["path"] for m in matches] == [str(p) for p in paths]

    meta, _ = read_checkpoint(checkpoints[name])
    x = np.stack([np.load(p) for p in paths]).astype(np.float32)[..., None] / np.float32(255)
    if meta["standardize"] is not None:
        mean, std = meta["standardize"]
        x = (x - np.float32(mean)) / np.float32(std)
    probs = load_network(checkpoints[name]).predict_proba(x)
    assert [int(m["digit"]) for m in matches] == list(probs.argmax(axis=1))
    assert [float(m["p"]) for m in matches] == pytest.approx(probs.max(axis=1), abs=5e-4)
    assert (probs.argmax(axis=1) == labels).mean() >= 0.8


def test_cli_top_k(tmp_path, checkpoints, capsys):
    a = save_png(tmp_path / "a.png", dark_bar_on_light())
    main(["--checkpoint", str(checkpoints["standardized"]), "--top", "3", str(a)])
    out = capsys.readouterr().out
    assert out.startswith(f"{a}: ") and out.endswith("\n")
    ranked = [(int(d), float(p)) for d, p in re.findall(r"(\d) \(p=([01]\.\d{3})\)", out)]
    assert len(ranked) == 3 and len({d for d, _ in ranked}) == 3
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)


def assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    return err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--top", "0"], "--top"),
        (["--invert", "--no-invert"], "not allowed with"),
        ([], "checkpoint"),
    ],
)
def test_cli_bad_arguments(tmp_path, checkpoints, capsys, argv, fragment):
    base = [] if argv == [] else ["--checkpoint", str(checkpoints["plain"])]
    with pytest.raises(SystemExit) as exc:
        main(base + argv + [str(save_png(tmp_path / "a.png", dark_bar_on_light()))])
    assert exc.value.code == 2
    assert_one_line_error(capsys, fragment)


def test_cli_missing_image(tmp_path, checkpoints, capsys):
    a = save_png(tmp_path / "a.png", dark_bar_on_light())
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(checkpoints["plain"]), str(a), str(tmp_path / "missing.png")])
    assert exc.value.code == 2
    assert_one_line_error(capsys, "missing.png")
    assert capsys.readouterr().out == ""  # nothing printed for the good file either


def test_cli_unreadable_image(tmp_path, checkpoints, capsys):
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(checkpoints["plain"]), str(tmp_path / "junk.png")])
    assert exc.value.code == 2
    assert_one_line_error(capsys, "junk.png", "cannot read image")


def test_cli_missing_checkpoint_in_a_real_process(tmp_path):
    """Exit status 2, one stderr line naming the file, no traceback."""
    a = save_png(tmp_path / "a.png", dark_bar_on_light())
    run = subprocess.run(
        [sys.executable, "-m", "model.predict", "--checkpoint", str(tmp_path / "none.npz"), str(a)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "checkpoint not found" in run.stderr and "none.npz" in run.stderr


def test_cli_help_documents_every_option():
    text = predict.build_parser().format_help()
    for option in ("--checkpoint", "--top", "--invert", "--no-invert", "default"):
        assert option in text


# ---- real MNIST digits -----------------------------------------------------------------------


def mnist_test_image(mnist_dir, index=0):
    """uint8 (28, 28) test image and its label, read straight from the IDX files."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return images[index].copy(), int(labels[index])


def test_mnist_digit_on_paper_comes_back_close_to_the_original(tmp_path, mnist_dir):
    """Black on white, 3x larger: preprocessing should nearly undo that (MNIST is 20x20-boxed)."""
    for index in range(5):
        image, _ = mnist_test_image(mnist_dir, index)
        paper = Image.fromarray(255 - image).resize((84, 84), Image.BILINEAR)
        paper.save(tmp_path / "digit.png")
        img = load_image(tmp_path / "digit.png")
        assert np.abs(img - image / 255).mean() < 0.06, index


def test_end_to_end_with_a_saved_network(tmp_path, mnist_dir, capsys):
    image, _ = mnist_test_image(mnist_dir)
    # As a user would have it: black digit on white paper, 3x larger.
    paper = Image.fromarray(255 - image).resize((84, 84), Image.BILINEAR)
    png = tmp_path / "digit.png"
    paper.save(png)
    checkpoint = tmp_path / "small.npz"
    net = build_network("small", seed=0)
    net.save(checkpoint)

    assert main(["--checkpoint", str(checkpoint), str(png)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    match = LINE.match(line)
    assert match and match["path"] == str(png)
    # The CLI's answer is the network's own answer on the same preprocessed input.
    loaded = load_network(checkpoint)
    probs = loaded.predict_proba(preprocess(load_image(png), loaded))[0]
    assert int(match["digit"]) == int(np.argmax(probs))
    assert float(match["p"]) == pytest.approx(probs.max(), abs=5e-4)

    main(["--checkpoint", str(checkpoint), "--top", "3", str(png)])
    out = capsys.readouterr().out.strip()
    ranked = [(int(d), float(p)) for d, p in re.findall(r"(\d) \(p=([01]\.\d{3})\)", out)]
    assert len(ranked) == 3 and [p for _, p in ranked] == sorted(
        (p for _, p in ranked), reverse=True
    )


def test_end_to_end_unreadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    a = save_png(tmp_path / "a.png", dark_bar_on_light())
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(bad), str(a)])
    assert exc.value.code == 2
    assert_one_line_error(capsys, "bad.npz")
