"""Classify digit images with a trained checkpoint.

    python -m model.predict --checkpoint net.npz digit.png [more.png scan.jpg array.npy ...] [--top 3]
    digit.png: 7 (p=0.987)

    >>> import numpy as np
    >>> from model.network import build_network
    >>> from model.predict import load_image, predict_files
    >>> digit = np.zeros((28, 28), np.float32)
    >>> digit[6:22, 13:15] = 1.0                    # a "1", white on black
    >>> np.save("digit.npy", digit)                 # or any image file Pillow reads
    >>> img = load_image("digit.npy")               # (28, 28) float32 in [0, 1], white on black
    >>> img.shape, img.dtype
    ((28, 28), dtype('float32'))
    >>> net = build_network("small", backend="im2col", seed=0)   # load_network("best.npz") in use
    >>> [(path, len(ranked)) for path, ranked in predict_files(net, ["digit.npy"], top=3)]
    [('digit.npy', 3)]

predict_files gives each path its `top` (digit, probability) pairs, most probable first.

Images are made to look like MNIST digits: any size, grayscale / RGB / RGBA / palette, converted
to grayscale in [0, 1]; inverted when the background is light (mean > 0.5), because MNIST digits
are white on black; contrast stretched to [0, 1]; the digit's bounding box scaled (aspect kept) to
fit 20x20 and placed in a 28x28 field with its centre of mass at the centre, as MNIST was made.
A `.npy` file must already hold one (28, 28) image; it is only scaled to [0, 1] and, if its
background is light, inverted (no resizing or centring).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from .batches import standardize
from .cli import Parser, fail, positive_int
from .network import input_standardization, load_network

SIZE = 28  # MNIST field
BOX = 20  # MNIST digits were scaled to fit this box, then centred in the field
INK = 0.1  # pixels above this (after inversion and stretching) count as the digit
# An image whose longer side exceeds twice this is shrunk by an integer box filter as it is
# loaded: its digit ends up in a BOX x BOX square, so more pixels only cost time and memory (as
# float64 grayscale and alpha planes, a 10000 x 10000 photo would take 1.6 GB).
LOAD_SIDE = 280


# ---- images --------------------------------------------------------------------------------------


def _resample_filter():
    from PIL import Image

    return getattr(Image, "Resampling", Image).LANCZOS  # Pillow < 9.1 has no Resampling enum


def _reduced(img):
    """`img` shrunk by an integer factor so its longer side is below 2 * LOAD_SIDE (box filter,
    aspect kept); smaller images come back as they are."""
    factor = max(img.size) // LOAD_SIDE
    if factor < 2:
        return img
    if img.mode in ("1", "P"):  # Image.reduce takes neither
        img = img.convert("RGBA")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor)


def _read_pixels(path: Path) -> np.ndarray:
    """Grayscale (H, W) float64 in [0, 1] from any image Pillow reads, an image larger than
    2 * LOAD_SIDE pixels across shrunk on load (_reduced); ValueError if unreadable or larger
    than Pillow's limit against decompression bombs (2 * Image.MAX_IMAGE_PIXELS)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; what it accepts
            # is shrunk here at once, so its warning would only alarm.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError:
        raise ValueError(
            f"image {str(path)!r} is too large to read safely (more than "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels): scale it down first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from None
    try:
        with opened as img:
            img.draft(img.mode, (LOAD_SIDE, LOAD_SIDE))  # JPEG decodes at 1/2..1/8 scale
            img.load()
            img = _reduced(img)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                # 16-bit/float grayscale: convert("L") would clip, so scale by the data's range.
                pixels = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if pixels.max() > 255 else 255.0
                return np.clip(pixels / peak, 0.0, 1.0)
            gray_alpha = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from None
    gray, alpha = gray_alpha[..., 0], gray_alpha[..., 1]
    if alpha.min() < 1.0 and alpha.sum() > 0:
        # Transparent pixels get the colour that contrasts with the drawn ones, so both a black
        # and a white digit on a transparent canvas survive (over plain white, a white one would not).
        ink = (alpha * gray).sum() / alpha.sum()
        gray = alpha * gray + (1.0 - alpha) * (1.0 if ink < 0.5 else 0.0)
    return gray


def _to_unit_range(array: np.ndarray, path: Path) -> np.ndarray:
    """A .npy image as float64 in [0, 1]: integers (and floats above 1) are taken as 0..255."""
    if array.dtype.kind not in "uifb":
        raise ValueError(f"image {str(path)!r} holds {array.dtype} values, not numbers")
    pixels = array.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise ValueError(f"image {str(path)!r} contains NaN or infinite values")
    if array.dtype.kind in "ui" or pixels.max() > 1.0:
        pixels = pixels / 255.0
    return np.clip(pixels, 0.0, 1.0)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read image {str(path)!r} as a .npy array: {exc}") from None
    if array.shape == (SIZE, SIZE, 1):
        array = array[..., 0]
    if array.shape != (SIZE, SIZE):
        raise ValueError(
            f"image {str(path)!r} must hold a ({SIZE}, {SIZE}) array, got shape {array.shape}"
        )
    return _to_unit_range(array, path)


def center_digit(gray: np.ndarray) -> np.ndarray:
    """MNIST-style (28, 28) float32 from a white-on-black (H, W) image in [0, 1].

    The digit's bounding box (pixels > INK) is scaled, aspect kept, so its longer side is 20, then
    placed so its centre of mass is at the field's centre (clamped to stay inside the field).
    A blank image (no pixel above INK) gives an all-zero field.
    """
    from PIL import Image

    rows = np.flatnonzero((gray > INK).any(axis=1))
    cols = np.flatnonzero((gray > INK).any(axis=0))
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    if rows.size == 0:
        return field
    digit = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX / max(digit.shape)
    height = max(1, round(digit.shape[0] * scale))
    width = max(1, round(digit.shape[1] * scale))
    resized = Image.fromarray(digit.astype(np.float32)).resize((width, height), _resample_filter())
    digit = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)  # Lanczos overshoots a little

    total = digit.sum()
    if total > 0:
        com_y = (digit.sum(axis=1) * np.arange(height)).sum() / total
        com_x = (digit.sum(axis=0) * np.arange(width)).sum() / total
    else:
        com_y, com_x = (height - 1) / 2, (width - 1) / 2
    # In pixel-index coordinates MNIST's centres of mass average (14.0, 14.0), not the geometric
    # 13.5: MNIST's centring put the centre of mass at SIZE / 2. Matching it matters more here.
    centre = SIZE / 2
    top = int(np.clip(round(centre - com_y), 0, SIZE - height))
    left = int(np.clip(round(centre - com_x), 0, SIZE - width))
    field[top : top + height, left : left + width] = digit
    return field


def load_image(path, invert: bool | None = None) -> np.ndarray:
    """One digit as MNIST sees it: (28, 28) float32 in [0, 1], white digit on black.

    path: an image file Pillow reads (any size and mode) or a .npy holding (28, 28) (or (28, 28, 1)).
    invert: None inverts when the mean is > 0.5 (light background); True/False force it.
    Raises FileNotFoundError (missing file) or ValueError (unreadable), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found (or not a file): {str(path)!r}")
    is_npy = path.suffix.lower() == ".npy"
    gray = _read_npy(path) if is_npy else _read_pixels(path)
    if gray.size == 0:
        raise ValueError(f"image {str(path)!r} is empty")
    if invert is None:
        invert = gray.mean() > 0.5
    if invert:
        gray = 1.0 - gray
    if is_npy:
        return gray.astype(np.float32)
    low, high = gray.min(), gray.max()
    if high > low:
        # Pencil on paper is grey on off-white; MNIST strokes reach 1 on a background of 0.
        gray = (gray - low) / (high - low)
    return center_digit(gray)


# ---- network -------------------------------------------------------------------------------------


def preprocess(images: np.ndarray, net) -> np.ndarray:
    """The network's input from load_image output: (28, 28) or (N, 28, 28) -> (N, 28, 28, 1).

    Casts to net.dtype and applies the standardisation the network was trained with
    (model.network.input_standardization of net.meta), as model.train did to its inputs.
    """
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"images must be (28, 28) or (N, 28, 28), got shape {x.shape}")
    x = x[..., None].astype(net.dtype)
    mean_std = input_standardization(net.meta)
    return x if mean_std is None else standardize(x, *mean_std)


def predict_files(net, paths, top: int = 1, invert: bool | None = None) -> list:
    """Classify image files in one batch: [(path, [(digit, probability), ...top]), ...].

    Each list is sorted by probability, highest first. All files are read before any is
    classified, so an unreadable one fails the call (FileNotFoundError/ValueError) with no output.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no image files given")
    images = np.stack([load_image(p, invert=invert) for p in paths])
    probs = np.asarray(net.predict_proba(preprocess(images, net)), dtype=np.float64)
    classes = probs.shape[1]
    if not 1 <= top <= classes:
        raise ValueError(f"--top must be between 1 and {classes}, got {top}")
    # Stable sort on -p: equal probabilities keep the lower digit first.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [
        (path, [(int(k), float(probs[i, k])) for k in order[i]]) for i, path in enumerate(paths)
    ]


def format_prediction(path, ranked) -> str:
    """ "digit.png: 7 (p=0.987)", with top-k: "digit.png: 7 (p=0.987), 1 (p=0.010)"."""
    return f"{path}: " + ", ".join(f"{digit} (p={p:.3f})" for digit, p in ranked)


def load_checkpoint(path):
    """The network saved at `path`; FileNotFoundError/ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found (or not a file): {str(path)!r}")
    try:
        return load_network(path)
    except Exception as exc:  # noqa: BLE001  any failure to parse the file is "unreadable" to the user
        message = str(exc)
        if str(path) not in message:
            message = f"cannot read checkpoint {str(path)!r}: {message or type(exc).__name__}"
        raise ValueError(message) from None


# ---- CLI -----------------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m model.predict",
        description=(
            "Print the predicted digit and its probability for each image, one line per image "
            "('digit.png: 7 (p=0.987)'). Images of any size and colour mode are made MNIST-like: "
            "grayscale, white digit on black, scaled into a 20x20 box and centred in 28x28. "
            ".npy files must hold one (28, 28) image."
        ),
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (PNG, JPEG, ... or .npy of shape (28, 28))",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="trained network (.npz written by net.save / model.train)",
    )
    parser.add_argument(
        "--top",
        type=positive_int,
        default=1,
        metavar="K",
        help="print the K most probable digits per image, most probable first",
    )
    invert = parser.add_mutually_exclusive_group()
    invert.add_argument(
        "--invert",
        dest="invert",
        action="store_true",
        default=None,
        help="always invert, for dark digits on a light background (default: "
        "invert when the mean brightness is above 0.5)",
    )
    invert.add_argument(
        "--no-invert",
        dest="invert",
        action="store_false",
        help="never invert, for light digits on a dark background (default: "
        "invert when the mean brightness is above 0.5)",
    )
    return parser


def main(argv=None) -> int:
    """CLI entry point; returns 0, or exits with status 2 and one error line on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        net = load_checkpoint(args.checkpoint)
        results = predict_files(net, args.images, top=args.top, invert=args.invert)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        fail(parser, exc)
    for path, ranked in results:
        print(format_prediction(path, ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
