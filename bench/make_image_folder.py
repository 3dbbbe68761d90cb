"""An ImageFolder of PNG files built from a data set this package reads, at a chosen size.

    python -m bench.make_image_folder --data fashion-mnist-test --count 3000 --seed 5 --out DIR
    python -m bench.make_image_folder --data digits --count 1000 --seed 11 --size 64 --out DIR
    python -m bench.make_image_folder --data digits --count 1000 --seed 11 --colour --out DIR

The README's folder rows were trained and scored on such folders (`deepcluster-train --data
DIR`): they take the path a user's own folder takes (file listing, decoding, grey detection,
the image size chosen from the files), which the built-in arrays skip.

The images are ``np.sort(np.random.default_rng(seed).choice(N, count, replace=False))`` of the
data set's N, each written as ``CLASS/INDEX.png`` (INDEX zero-padded to the digits of N, the
class folder named after the class), in grey (mode L), resized with PIL's bicubic filter to
``--size`` pixels square when it is given (0 keeps the native size).

``--colour`` paints each image in two colours drawn for it alone, independently of its class
(``np.random.default_rng([seed, 1])``, one draw per image in file order): the background from
0..127 and the ink from 128..255 in each channel, pixel = ink * g + background * (1 - g) for the
grey level g in 0..1, rounded, written as RGB. Colour then carries no class, as the paper's
Sobel filter assumes (a clustering of raw pixels follows it), and the folder takes the colour
path of the trainer (Sobel on).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from deepcluster.data import load_images
from deepcluster.eval import _fashion_mnist_test

DATA = ("digits", "fashion-mnist", "fashion-mnist-test")
# Fashion-MNIST's classes in label order, as folder names ('/' and ' ' cannot stay).
FASHION_CLASSES = ("T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle_boot")


def paint(grey: np.ndarray, ink: np.ndarray, background: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): a uint8 (H, W) grey image in two RGB colours (0..255 each)."""
    g = grey.astype(np.float64)[..., None] / 255.0
    return np.rint(ink * g + background * (1.0 - g)).astype(np.uint8)


def make_image_folder(data: str, out: Path, *, count: int = 0, seed: int = 0,
                      size: int = 0, colour: bool = False) -> int:
    """Write the folder; returns the number of images written."""
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    if size < 0 or count < 0:
        raise ValueError(f"count and size must be >= 0, got count {count}, size {size}")
    images = _fashion_mnist_test() if data == "fashion-mnist-test" else load_images(data)
    n = len(images)
    if count > n:
        raise ValueError(f"{data} has {n} images, fewer than --count {count}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose a new folder")
    chosen = (np.sort(np.random.default_rng(seed).choice(n, count, replace=False)) if count
              else np.arange(n))
    names = [str(c) for c in range(10)] if data == "digits" else list(FASHION_CLASSES)
    width = len(str(n))
    colours = np.random.default_rng([seed, 1])
    for index in chosen.tolist():
        pixels = images.images[index][0].numpy()  # one grey channel, uint8
        image = Image.fromarray(pixels)  # 2-D uint8: grey, mode L
        if size:
            image = image.resize((size, size), Image.BICUBIC)
        if colour:
            ink, background = colours.integers(128, 256, 3), colours.integers(0, 128, 3)
            image = Image.fromarray(paint(np.asarray(image), ink, background))
        folder = out / names[int(images.labels[index])]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:0{width}d}.png")
    return len(chosen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=DATA, required=True)
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    parser.add_argument("--count", type=int, default=0, help="images drawn (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--size", type=int, default=0, help="side in pixels (0: native)")
    parser.add_argument("--colour", action="store_true",
                        help="paint each image in two random colours, independent of its class")
    args = parser.parse_args(argv)
    written = make_image_folder(args.data, args.out, count=args.count, seed=args.seed,
                                size=args.size, colour=args.colour)
    print(f"{written} images of {args.data} in {args.out}")


if __name__ == "__main__":
    main()
