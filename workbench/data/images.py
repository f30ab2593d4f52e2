"""Image loading that survives corrupt or missing files.

`ImageDataset` returns `(image_tensor, label, index)`; an image that cannot be read gives `None`
instead, with one warning per file, and its path is recorded in `dataset.skipped`. Use
`collate_skip_none` as the DataLoader's `collate_fn` to drop those items; a batch in which every
item was unreadable collates to `None` (skip it in the loop).

Skips are also appended to a small log file, so they are counted when DataLoader workers (other
processes) did the reading: `dataset.skipped` merges both.

Decoded images are kept in memory (`DecodedImageCache`, bounded by WORKBENCH_IMAGE_CACHE_MB,
default 1024; 0 turns it off): few-shot training reads the same few images every epoch.

`check_skipped` fails a split when more than WORKBENCH_MAX_SKIPPED_FRACTION (default 0.05) of its
images could not be read, saying which command finds them.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset, default_collate, get_worker_info

from workbench.data.types import Sample


class UnreadableImageWarning(UserWarning):
    """An image file could not be read and was skipped."""


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image fully (decoding it, so truncated files fail here) as RGB."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class DecodedImageCache:
    """Decoded RGB images in memory, least recently used evicted first, within `max_bytes`.

    Keyed by path, modification time, size, inode and change time (which every write sets and
    `os.utime` cannot restore), so a file that changes is decoded again. Cached
    images are shared: transforms must return new images (torchvision's do), never edit in place.
    DataLoader worker processes bypass it: they end with their epoch, so a copy per worker would
    only multiply the memory.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[tuple, tuple[Image.Image, int]] = OrderedDict()  # key -> (image, bytes)
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, path: str | os.PathLike) -> Image.Image:
        if self.max_bytes == 0 or get_worker_info() is not None:
            return open_rgb(path)
        st = os.stat(path)
        key = (os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]
        self.misses += 1
        img = open_rgb(path)
        size = img.width * img.height * 3
        if size <= self.max_bytes:
            self._items[key] = (img, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, old_size) = self._items.popitem(last=False)
                self.bytes -= old_size
        return img

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def _cache_budget() -> int:
    try:
        return int(float(os.environ.get("WORKBENCH_IMAGE_CACHE_MB", "1024")) * 2**20)
    except ValueError:
        return 1024 * 2**20


decoded_images = DecodedImageCache(_cache_budget())


class ImageDataset(Dataset):
    def __init__(
        self,
        samples: Sequence[Sample],
        image_root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_log: str | os.PathLike | None = None,
        cache: DecodedImageCache | None = decoded_images,
    ):
        self.samples = list(samples)
        self.image_root = Path(image_root)
        self.transform = transform
        self.cache = cache
        self._skipped: list[str] = []
        self._warned: set[str] = set()
        self._owner_pid = os.getpid()
        if skip_log is None:
            fd, name = tempfile.mkstemp(prefix="workbench-skipped-", suffix=".txt")
            os.close(fd)
            self._skip_log, self._own_log = Path(name), True
        else:
            self._skip_log, self._own_log = Path(skip_log), False

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        s = self.samples[index]
        path = self.image_root / s.path
        try:
            img = self.cache.get(path) if self.cache is not None else open_rgb(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal
            self._record_skip(s.path, e)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, s.label, index

    def _record_skip(self, rel: str, err: BaseException) -> None:
        if rel not in self._warned:
            self._warned.add(rel)
            self._skipped.append(rel)
            warnings.warn(
                f"skipping unreadable image {self.image_root / rel}: {type(err).__name__}: {err}",
                UnreadableImageWarning,
                stacklevel=3,
            )
            try:
                with open(self._skip_log, "a", encoding="utf-8") as f:
                    f.write(rel + "\n")
            except OSError:
                pass

    @property
    def skipped(self) -> list[str]:
        """Unique relative paths of the images skipped so far (this process and its workers)."""
        seen = dict.fromkeys(self._skipped)
        try:
            with open(self._skip_log, encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if line:
                        seen.setdefault(line, None)
        except OSError:
            pass
        return list(seen)

    def __del__(self):
        try:
            if self._own_log and os.getpid() == self._owner_pid:
                self._skip_log.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def collate_skip_none(batch: list):
    """default_collate over the readable items; None when none is left."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


class TooManyUnreadableImagesError(RuntimeError):
    """More than the allowed fraction of a split's images could not be read."""


DEFAULT_MAX_SKIPPED_FRACTION = 0.05


def max_skipped_fraction() -> float:
    raw = os.environ.get("WORKBENCH_MAX_SKIPPED_FRACTION", "")
    try:
        return float(raw) if raw.strip() else DEFAULT_MAX_SKIPPED_FRACTION
    except ValueError:
        raise ValueError(f"WORKBENCH_MAX_SKIPPED_FRACTION must be a number (a fraction, e.g. 0.05), got {raw!r}") from None


def check_skipped(skipped: Sequence[str], total: int, dataset: str, what: str = "training",
                  image_root: str | os.PathLike | None = None) -> None:
    """Raise TooManyUnreadableImagesError when more than `max_skipped_fraction()` of `total` were skipped."""
    limit = max_skipped_fraction()
    if total and len(skipped) > limit * total:
        example = Path(image_root) / skipped[0] if image_root is not None else skipped[0]
        name = re.sub(r"_(base|new)$", "", dataset)  # base-to-novel halves are named <dataset>_base/_new
        raise TooManyUnreadableImagesError(
            f"{len(skipped)} of {total} {what} images of {name} could not be read (e.g. {example}): "
            f"run `workbench data check --dataset {name}` (more than {limit:g} of them; "
            "WORKBENCH_MAX_SKIPPED_FRACTION sets the limit)")


def check_image(path: str | os.PathLike) -> str | None:
    """None if the file decodes, else a short reason ("missing", or the error)."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        open_rgb(p)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


__all__ = ["ImageDataset", "DecodedImageCache", "decoded_images", "collate_skip_none", "check_image", "open_rgb",
           "UnreadableImageWarning", "TooManyUnreadableImagesError", "check_skipped", "max_skipped_fraction"]
