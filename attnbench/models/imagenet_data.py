"""ImageNet-style validation data: folder scanning, labels files and the evaluation transform.

Accepted layouts (`load_eval_dataset(path)`):

1. Class folders (torchvision's ImageFolder convention): `val/<class_dir>/<image>`. The sorted
   names of the class directories are the label indices (0 .. C-1), which for ImageNet-1k (wnid
   folder names `n01440764`, ...) is the standard label order of released checkpoints. Images are
   found recursively inside each class directory; hidden entries (names starting with ".") and
   files without an image extension are ignored; a class directory without images is an error.
2. Flat folder + labels file: the images in one folder and a labels file beside them, named
   `labels.txt` or `labels.csv` (or any labels file given directly as the path; images are then
   looked up relative to the file's folder, so names may contain subdirectories).
   - `.txt` (any other suffix): one `filename label` per line, split at the last whitespace (so
     names may contain spaces); blank lines and lines starting with `#` are skipped.
   - `.csv`: `filename,label` rows; a first row whose label field is not an integer is a header.
   Labels are 0-based integer indices into the model's classes (the sorted-wnid order for
   ImageNet-1k). The devkit's `ILSVRC2012_validation_ground_truth.txt` (1-based ILSVRC ids in a
   different order, no file names) is NOT accepted: convert it to one of the formats above.

The transform follows torchvision's documented semantics on PIL images (Resize(S) with an int,
CenterCrop, ToTensor, Normalize), implemented with Pillow + numpy because torchvision is not a
dependency:

- Resize(S): the shorter side becomes S, the longer side int(S * long / short), resampled with
  Pillow's BICUBIC (antialiased). torchvision's tensor path uses its own antialiased bicubic kernel,
  which differs slightly from Pillow's; we follow the PIL path, which is what torchvision does when
  given PIL images (the usual ImageNet evaluation).
- CenterCrop(c): top = int(round((H - c) / 2)), left = int(round((W - c) / 2)) (Python's round,
  so halves go to the even integer).
- The image is converted to RGB first; ToTensor scales uint8 to [0, 1] in float32; Normalize
  subtracts the ImageNet mean and divides by the std per channel.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from attnbench.errors import AttnbenchError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # 224 / 256, the usual ImageNet evaluation ratio
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
LABEL_FILE_NAMES = ("labels.txt", "labels.csv")

__all__ = [
    "CROP_FRACTION",
    "DataError",
    "EvalTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageListDataset",
    "default_resize_size",
    "load_eval_dataset",
    "read_labels_file",
]


class DataError(AttnbenchError):
    """Evaluation data that cannot be used (missing, empty, malformed labels, class-count mismatch)."""


def _pil_image():
    """Pillow's Image module, imported on first use (an optional dependency: attnbench[imagenet])."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is installed wherever the tests run
        raise AttnbenchError("ImageNet evaluation needs Pillow: pip install 'attnbench[imagenet]'") from None
    return Image


def default_resize_size(image_size: int) -> int:
    """Shorter-side resize for a center crop of `image_size`: int(image_size / 0.875) (224 -> 256)."""
    return int(image_size / CROP_FRACTION)


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> normalised float32 tensor (3, image_size, image_size); picklable for DataLoader workers."""

    image_size: int = 224
    resize_size: int | None = None  # None: default_resize_size(image_size)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise DataError(f"image size must be positive, got {self.image_size}")
        if self.resize < self.image_size:
            raise DataError(
                f"resize size {self.resize} is smaller than the crop {self.image_size}; use a resize size >= the crop"
            )

    @property
    def resize(self) -> int:
        return self.resize_size if self.resize_size is not None else default_resize_size(self.image_size)

    @property
    def protocol(self) -> str:
        """Short label of the protocol for notes, e.g. `resize256-bicubic/crop224`."""
        return f"resize{self.resize}-bicubic/crop{self.image_size}"

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after Resize(self.resize): shorter side -> S, longer -> int(S * long / short)."""
        s = self.resize
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of CenterCrop(self.image_size) on a width x height image."""
        c = self.image_size
        top = int(round((height - c) / 2.0))
        left = int(round((width - c) / 2.0))
        return left, top, left + c, top + c

    def __call__(self, image: PILImage) -> torch.Tensor:
        Image = _pil_image()
        image = image.convert("RGB")
        new_size = self.resized_size(*image.size)
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BICUBIC)
        image = image.crop(self.crop_box(*image.size))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (h, w, 3) uint8
        x = pixels.permute(2, 0, 1).to(torch.float32).div(255)  # (3, h, w) in [0, 1]
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return x.sub_(mean).div_(std)


class ImageListDataset(Dataset):
    """(path, label) samples decoded with Pillow and transformed; items are (Tensor (3, s, s), int)."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: EvalTransform,
        *,
        root: str,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.root = root
        self.classes = list(classes) if classes is not None else None  # class-folder layout only
        self.max_label = max((label for _, label in self.samples), default=-1)

    @property
    def num_classes(self) -> int | None:
        """Number of classes the data defines (class folders), None where only labels are known (flat)."""
        return len(self.classes) if self.classes is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        Image = _pil_image()
        try:
            with Image.open(path) as image:
                x = self.transform(image)  # (3, s, s)
        except OSError as e:
            raise DataError(f"cannot read image {path} ({e}); replace or remove the file") from None
        return x, label


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(directory: Path) -> list[Path]:
    """Image files anywhere under `directory`, sorted, skipping hidden files and folders."""
    found = []
    for p in directory.rglob("*"):
        rel = p.relative_to(directory).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file() and _is_image(p):
            found.append(p)
    return sorted(found)


def _scan_class_folders(root: Path, class_dirs: list[Path]) -> tuple[list[tuple[str, int]], list[str]]:
    classes = [d.name for d in class_dirs]  # already sorted
    samples: list[tuple[str, int]] = []
    empty = []
    for label, d in enumerate(class_dirs):
        files = _images_under(d)
        if not files:
            empty.append(d.name)
        samples.extend((str(f), label) for f in files)
    if empty:
        shown = ", ".join(empty[:3]) + (f" (+{len(empty) - 3} more)" if len(empty) > 3 else "")
        raise DataError(
            f"{len(empty)} class folder(s) in {root} hold no images: {shown}; "
            "restore their images (removing the folders would shift the labels of later classes)"
        )
    return samples, classes


def _parse_label(text: str) -> int | None:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def read_labels_file(path: str | Path) -> list[tuple[str, int]]:
    """Parse a labels file into (relative filename, label) pairs; format by suffix (see module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file {path} ({e}); pass a readable UTF-8 text or CSV file") from None
    rows: list[tuple[int, str, str]] = []  # (line number, filename, label text)
    if path.suffix.lower() == ".csv":
        first = True
        for lineno, fields in enumerate(csv.reader(text.splitlines()), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) < 2:
                raise DataError(
                    f"{path}:{lineno}: expected 'filename,label', got {','.join(fields)[:80]!r}; fix the row"
                )
            is_header = first and _parse_label(fields[1]) is None
            first = False
            if not is_header:
                rows.append((lineno, fields[0].strip(), fields[1]))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.rsplit(None, 1)
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 'filename label', got {stripped[:80]!r}; fix the line")
            rows.append((lineno, parts[0], parts[1]))
    entries: list[tuple[str, int]] = []
    first_line: dict[str, int] = {}
    for lineno, name, label_text in rows:
        label = _parse_label(label_text)
        if label is None:
            raise DataError(
                f"{path}:{lineno}: label {label_text.strip()[:40]!r} is not a non-negative integer; "
                "labels are 0-based class indices"
            )
        if name in first_line:
            raise DataError(f"{path}:{lineno}: {name} is listed twice (first on line {first_line[name]}); keep one")
        first_line[name] = lineno
        entries.append((name, label))
    if not entries:
        raise DataError(f"labels file {path} lists no images; add 'filename label' lines")
    return entries


def _scan_labels_file(labels_path: Path) -> list[tuple[str, int]]:
    root = labels_path.parent
    samples = []
    for name, label in read_labels_file(labels_path):
        image = root / name
        if not image.is_file():
            raise DataError(f"{labels_path}: image {name} not found in {root}; fix the labels file or add the image")
        samples.append((str(image), label))
    return samples


def load_eval_dataset(path: str | Path, *, image_size: int = 224, resize_size: int | None = None) -> ImageListDataset:
    """Scan an ImageNet-style validation folder (or a labels file) into a dataset; see the module docstring."""
    path = Path(path).expanduser()
    transform = EvalTransform(image_size=image_size, resize_size=resize_size)
    if not path.exists():
        raise DataError(
            f"evaluation data not found: {path}; point data/--data at a val folder (val/<class_dir>/<image>) "
            "or at a labels file"
        )
    if path.is_file():
        return ImageListDataset(_scan_labels_file(path), transform, root=str(path.parent))
    label_files = [path / name for name in LABEL_FILE_NAMES if (path / name).is_file()]
    if len(label_files) > 1:
        raise DataError(f"{path} holds both labels.txt and labels.csv; pass the one to use as the data path")
    if label_files:
        return ImageListDataset(_scan_labels_file(label_files[0]), transform, root=str(path))
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        samples, classes = _scan_class_folders(path, class_dirs)
        return ImageListDataset(samples, transform, root=str(path), classes=classes)
    if any(p.is_file() and _is_image(p) for p in path.iterdir()):
        raise DataError(
            f"{path} holds images but no labels.txt/labels.csv; add one ('filename label' per line) "
            "or sort the images into val/<class_dir>/<image>"
        )
    raise DataError(f"no images found in {path}; expected val/<class_dir>/<image> or images with a labels.txt")
