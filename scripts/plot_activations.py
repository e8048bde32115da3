"""Draw every registered activation and its derivative: `python scripts/plot_activations.py [FOLDER]`.

Writes activations.png and .svg (all activations on one grid) and activation_<name>.png and .svg
(one each) into FOLDER (default outputs/activations); `--tensorboard DIR` writes the same figures as
TensorBoard images (tags activations/all and activation/<name>) instead. The derivatives come from
autograd, so what you see is what backpropagation multiplies by.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from mlpkit import figures  # noqa: E402
from mlpkit.activations import ACTIVATIONS  # noqa: E402


def all_figures():
    """(name, figure) pairs: the grid of every activation first, then one figure per activation."""
    yield "activations", figures.activation_gallery_figure()
    for name in ACTIVATIONS:
        yield f"activation_{name}", figures.activation_figure(name)


def write_files(folder: Path) -> list[Path]:
    written = []
    for name, figure in all_figures():
        written += figures.save_figure(figure, folder / name, formats=("png", "svg"))
    return written


def write_tensorboard(log_dir: Path) -> list[str]:
    from mlpkit.tensorboard import TensorBoardLogger

    logger = TensorBoardLogger(log_dir)
    tags = []
    for name, figure in all_figures():
        tag = "activations/all" if name == "activations" else name.replace("activation_", "activation/", 1)
        logger.log_image(tag, figures.figure_to_rgb(figure), step=0)
        tags.append(tag)
    logger.close()
    return tags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("outputs/activations"),
                        help="where the PNG and SVG files go (default: outputs/activations)")
    parser.add_argument("--tensorboard", type=Path, metavar="DIR",
                        help="write the figures as TensorBoard images into DIR instead of files")
    args = parser.parse_args(argv)
    if args.tensorboard is not None:
        tags = write_tensorboard(args.tensorboard)
        print(f"wrote {len(tags)} images to {args.tensorboard}; view them: tensorboard --logdir "
              f"{args.tensorboard} (IMAGES tab)")
    else:
        written = write_files(args.folder)
        print(f"wrote {len(written)} files to {args.folder}: activations.png/.svg (all on one grid) and "
              "activation_<name>.png/.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
