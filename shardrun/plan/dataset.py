"""Scanning a dataset: which images training can use, which it cannot and why.

Images are identified by their content (Pillow), never by their extension. Every file that cannot
be used is listed with a reason instead of stopping the scan; only a dataset with no usable image
at all raises `DatasetError`. Packing the accepted images into shards lives in `shardrun.plan.shards`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from fnmatch import fnmatchcase
from multiprocessing import get_context
from pathlib import Path

from PIL import Image, ImageFile, ImageMode, UnidentifiedImageError

from shardrun.errors import DatasetError
from shardrun.units import human_bytes

# What TensorFlow's decoders read (tf.io.decode_png / decode_jpeg / decode_bmp).
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP")
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp"}
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"))
_PNG_END = b"IEND\xaeB`\x82"

# Files above this size are only sniffed until they look like a supported image, so that a video
# or an archive lying in the dataset folder is never read whole.
_LARGE_FILE = 64 * 1024 * 1024
_HEAD = 64 * 1024

# Below this many files the scan runs in-process: starting worker processes costs more.
_POOL_MIN_FILES = 2000
_MAX_CHUNK = 512

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageInfo:
    """One usable image: where it is, what it holds, and the hash that identifies its bytes."""

    path: str  # display path relative to the data root, '/'-separated, printable
    source: str  # real filesystem path (may contain surrogate escapes)
    size: int  # bytes of the file
    sha256: str
    width: int
    height: int
    channels: int  # 1 for grayscale(+alpha), 3 for colour (RGB, RGBA, palette, CMYK...)
    format: str  # "PNG" | "JPEG" | "BMP"
    mode: str = ""  # Pillow's mode ("L", "I;16", "P", "RGB", "RGBA", ...)


@dataclass(frozen=True)
class Rejected:
    """One file (or folder) the scan could not use, with a one-line reason."""

    path: str
    reason: str
    # A short stable identifier of the reason, for summaries: "duplicate", "too-small", ...
    kind: str = "other"


@dataclass
class ScanResult:
    """The accepted images (sorted, without duplicates), the rejected files and the fingerprint."""

    accepted: list[ImageInfo]
    rejected: list[Rejected]
    fingerprint: str
    data: str = ""  # the data value as given
    root: str = ""  # the folder display paths are relative to

    @property
    def total_bytes(self) -> int:
        """Returns the bytes of all accepted images."""
        return sum(image.size for image in self.accepted)

    @property
    def reasons(self) -> Counter[str]:
        """Returns how many files were rejected, by kind of reason."""
        return Counter(item.kind for item in self.rejected)

    def summary(self) -> str:
        """Returns one line: images accepted, their size, and rejections by kind."""
        line = f"{len(self.accepted)} images ({human_bytes(self.total_bytes)}) accepted"
        if self.rejected:
            line += f", {len(self.rejected)} rejected ({_counts(self.reasons)})"
        return line


@dataclass(frozen=True)
class DatasetChange:
    """Paths added, removed and modified (same path, other bytes) between two dataset states."""

    added: list[str]
    removed: list[str]
    modified: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def summary(self) -> str:
        """Returns one line such as `12 added, 3 removed, 1 modified (e.g. a/b.png)`."""
        if not self:
            return "no change"
        example = (self.modified or self.added or self.removed)[0]
        return (
            f"{len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.modified)} modified (e.g. {example})"
        )


def display_path(path: str) -> str:
    """Returns `path` with '/' separators and non-UTF-8 bytes as printable backslash escapes."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text.replace(os.sep, "/") if os.sep != "/" else text


def dataset_fingerprint(images: Iterable[ImageInfo]) -> str:
    """Returns the sha256 over the sorted (path, sha256) pairs: the identity of a dataset."""
    digest = hashlib.sha256()
    # NUL cannot occur in a file name and sha256 has a fixed length, so the encoding is unambiguous.
    for path, sha in sorted((image.path, image.sha256) for image in images):
        digest.update(path.encode("utf-8") + b"\0" + sha.encode("ascii") + b"\n")
    return digest.hexdigest()


def diff_datasets(old_entries: Iterable, new_scan: ScanResult | Iterable) -> DatasetChange:
    """Returns what changed from `old_entries` to `new_scan`, keyed by path.

    Both sides are anything with `path` and `sha256` attributes (ImageInfo, manifest images);
    `new_scan` may also be a ScanResult, whose accepted images are compared.
    """
    new_images = new_scan.accepted if isinstance(new_scan, ScanResult) else new_scan
    old = {entry.path: entry.sha256 for entry in old_entries}
    new = {entry.path: entry.sha256 for entry in new_images}
    return DatasetChange(
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        modified=sorted(path for path in old.keys() & new.keys() if old[path] != new[path]),
    )


def scan_dataset(
    data: str | os.PathLike,
    base_dir: Path | str,
    *,
    min_side: int,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
    max_pixels: int | None = None,
) -> ScanResult:
    """Returns the usable images of `data` (a folder or a glob pattern), and the rejected files.

    A relative `data` is relative to `base_dir` (the job file's folder). Folders are searched
    recursively, following symlinks; hidden files and folders (name starting with '.') are
    ignored. `on_progress(done, total)` is called with done=0 once the files are listed, then as
    files are inspected. `max_pixels` caps width*height (default: Pillow's MAX_IMAGE_PIXELS).
    Raises DatasetError when the folder does not exist, a pattern matches nothing, or no image
    is usable.
    """
    if not isinstance(min_side, int) or min_side < 1:
        raise ValueError(f"min_side must be a positive integer, got {min_side!r}")
    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS or 2**62
    data = os.fspath(data)
    root, pattern, what = _resolve(data, Path(base_dir))
    files, rejected = _list_files(root, pattern)
    if not files and not rejected:
        if pattern is None:
            raise DatasetError(f"no file found in {what} (resolved to {display_path(root)})")
        raise DatasetError(f"no file matches {what} (searched {display_path(root)})")

    total = len(files)
    if on_progress is not None:
        on_progress(0, total)
    outcomes = _inspect_all([source for source, _ in files], min_side, max_pixels, workers,
                            on_progress, what)

    accepted: list[ImageInfo] = []
    for (source, path), outcome in zip(files, outcomes):
        if outcome[0] == "ok":
            _, size, sha, width, height, channels, fmt, mode = outcome
            accepted.append(ImageInfo(path, source, size, sha, width, height, channels, fmt, mode))
        else:
            rejected.append(Rejected(path, outcome[2], outcome[1]))
    accepted.sort(key=lambda image: image.path)
    accepted = _drop_duplicates(accepted, rejected)
    rejected.sort(key=lambda item: item.path)
    if not accepted:
        counts = _counts(Counter(item.kind for item in rejected))
        raise DatasetError(f"no usable image in {what}: {len(rejected)} rejected ({counts})")
    return ScanResult(accepted, rejected, dataset_fingerprint(accepted), data, display_path(root))


def _drop_duplicates(images: list[ImageInfo], rejected: list[Rejected]) -> list[ImageInfo]:
    """Returns `images` (sorted) with later equal contents and ambiguous names moved to rejected."""
    first_by_hash: dict[str, str] = {}
    seen_paths: set[str] = set()
    kept = []
    for image in images:
        if image.path in seen_paths:
            # Only possible when escaping made two different byte names print the same.
            rejected.append(Rejected(image.path, "file name is ambiguous after escaping",
                                     "ambiguous-name"))
        elif image.sha256 in first_by_hash:
            reason = f"duplicate of {first_by_hash[image.sha256]}"
            rejected.append(Rejected(image.path, reason, "duplicate"))
        else:
            first_by_hash[image.sha256] = image.path
            seen_paths.add(image.path)
            kept.append(image)
    return kept


# --- where the files are -------------------------------------------------------------------


def _resolve(data: str, base_dir: Path) -> tuple[str, list[str] | None, str]:
    """Returns (root folder, glob segments or None, description of `data` for messages)."""
    if not data.strip():
        raise DatasetError("the dataset's data value is empty; give a folder or a glob pattern")
    expanded = os.path.expanduser(data)
    parts = expanded.split("/")
    magic = [i for i, part in enumerate(parts) if re.search(r"[*?[]", part)]
    if not magic:
        root = os.path.join(os.fspath(base_dir), expanded)
        what = f"dataset folder {data!r}"
        if not os.path.isdir(root):
            state = "is not a folder" if os.path.exists(root) else "does not exist"
            raise DatasetError(f"{what} {state} (resolved to {display_path(root)})")
        return root, None, what
    fixed = "/".join(parts[: magic[0]]) or ("/" if expanded.startswith("/") else ".")
    root = os.path.join(os.fspath(base_dir), fixed)
    pattern = [part for part in parts[magic[0]:] if part not in ("", ".")]
    return root, pattern, f"dataset pattern {data!r}"


def _matches(pattern: Sequence[str], parts: Sequence[str], prefix: bool = False) -> bool:
    """Returns whether `parts` matches `pattern` ('**' spans folders), or may lead to a match."""
    if not parts:
        return bool(pattern) if prefix else all(segment == "**" for segment in pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        return _matches(pattern[1:], parts, prefix) or _matches(pattern, parts[1:], prefix)
    return fnmatchcase(parts[0], pattern[0]) and _matches(pattern[1:], parts[1:], prefix)


def _list_files(
    root: str, pattern: list[str] | None
) -> tuple[list[tuple[str, str]], list[Rejected]]:
    """Returns the (real path, display path) of candidate files under `root`, and early rejects.

    Real folders are walked first, folders reached through symlinks afterwards, so a folder
    reachable both ways is shown under its real name; a folder is entered once, by (st_dev,
    st_ino), which also breaks symlink loops.
    """
    files: list[tuple[str, str]] = []
    rejected: list[Rejected] = []

    def wanted(parts: tuple[str, ...], folder: bool = False) -> bool:
        return pattern is None or _matches(pattern, parts, prefix=folder)

    def reject(parts: tuple[str, ...], reason: str, kind: str) -> None:
        rejected.append(Rejected(display_path("/".join(parts) or "."), reason, kind))

    if not os.path.isdir(root):
        return files, rejected  # a glob whose fixed part does not exist matches nothing
    seen: dict[tuple[int, int], tuple[str, ...]] = {}
    real: deque = deque([(root, (), ())])  # (folder, display parts, (st_dev, st_ino) above it)
    linked: deque = deque()
    while real or linked:
        folder, parts, ancestors = (real or linked).popleft()
        try:
            target = os.stat(folder)
        except OSError as error:
            reject(parts, _os_reason(error), _os_kind(error))
            continue
        key = (target.st_dev, target.st_ino)
        if key in ancestors:
            reject(parts, f"symlink loop back to {display_path('/'.join(seen[key]) or '.')}",
                   "symlink-loop")
            continue
        if key in seen:
            reject(parts, f"same folder as {display_path('/'.join(seen[key]))} (already scanned)",
                   "repeated-folder")
            continue
        seen[key] = parts
        ancestors = ancestors + (key,)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            reject(parts, _os_reason(error, "unreadable folder"), _os_kind(error))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = parts + (entry.name,)
            try:
                if entry.is_symlink():
                    try:
                        mode = os.stat(entry.path).st_mode
                    except OSError as error:
                        if wanted(child):
                            reject(child, _link_reason(error), _link_kind(error))
                        continue
                    if stat.S_ISDIR(mode):
                        if wanted(child, folder=True):
                            linked.append((entry.path, child, ancestors))
                        continue
                    is_file = stat.S_ISREG(mode)
                elif entry.is_dir(follow_symlinks=False):
                    if wanted(child, folder=True):
                        real.append((entry.path, child, ancestors))
                    continue
                else:
                    is_file = entry.is_file(follow_symlinks=False)
            except OSError as error:
                if wanted(child):
                    reject(child, _os_reason(error), _os_kind(error))
                continue
            if not wanted(child):
                continue
            if is_file:
                files.append((entry.path, display_path("/".join(child))))
            else:
                reject(child, "not a regular file (device, pipe or socket)", "not-a-file")
    return files, rejected


def _os_kind(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "vanished"
    return "unreadable"


def _os_reason(error: OSError, what: str = "unreadable") -> str:
    if isinstance(error, FileNotFoundError):
        return "vanished during scan"
    if isinstance(error, PermissionError):
        return f"{what}: permission denied"
    return f"{what}: {error.strerror or error}"


def _link_kind(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink-loop"
    return "broken-symlink" if isinstance(error, FileNotFoundError) else _os_kind(error)


def _link_reason(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if isinstance(error, FileNotFoundError):
        return "broken symlink (its target does not exist)"
    return _os_reason(error)


# --- what the files hold -------------------------------------------------------------------


def _inspect_all(sources: list[str], min_side: int, max_pixels: int, workers: int | None,
                 on_progress: ProgressCallback | None, what: str) -> list[tuple]:
    """Returns one outcome per source, inspecting in worker processes when there are many."""
    total = len(sources)
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    chunk = max(16, min(_MAX_CHUNK, total // (workers * 8) or 1))
    starts = range(0, total, chunk)
    outcomes: list[tuple] = [()] * total
    done = 0

    def record(start: int, results: list[tuple]) -> None:
        nonlocal done
        outcomes[start : start + len(results)] = results
        done += len(results)
        if on_progress is not None:
            on_progress(done, total)

    if workers <= 1 or total < _POOL_MIN_FILES:
        for start in starts:
            record(start, _inspect_chunk(sources[start : start + chunk], min_side, max_pixels))
        return outcomes

    # Spawned workers import nothing of the caller's state (threads, locks), unlike fork.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    pending: dict = {}
    queue = iter(starts)
    try:
        while True:
            # Bounded submission keeps memory flat and progress steady on very large datasets.
            while len(pending) < workers * 4:
                start = next(queue, None)
                if start is None:
                    break
                batch = sources[start : start + chunk]
                pending[pool.submit(_inspect_chunk, batch, min_side, max_pixels)] = start
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record(pending.pop(future), future.result())
    except BrokenProcessPool as error:
        raise DatasetError(f"scanning {what} failed: a worker process died ({error})") from error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _inspect_chunk(sources: list[str], min_side: int, max_pixels: int) -> list[tuple]:
    """Returns the outcome of each file; runs in a worker process or in-process."""
    # Truncated files must fail to decode, and the bomb limit must be ours, whatever the caller
    # set; restored afterwards because in-process these are the caller's globals.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return [_inspect(source, min_side) for source in sources]
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def _inspect(source: str, min_side: int) -> tuple:
    """Returns ("ok", size, sha256, width, height, channels, format, mode) or ("no", kind, reason).

    The file is read once: the hash and the decoding use the same bytes.
    """
    try:
        with open(source, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > _LARGE_FILE:
                head = handle.read(_HEAD)
                if _sniff(head) is None:
                    return _identify_only(head)
                data = head + handle.read()
            else:
                data = handle.read()
    except OSError as error:
        return ("no", _os_kind(error), _os_reason(error))
    if not data:
        return ("no", "empty", "empty file (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    magic = _sniff(data)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if magic:
            return ("no", "corrupt", f"corrupt {magic}: Pillow cannot read its header")
        return ("no", "not-an-image", "not an image (Pillow cannot identify it)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ("no", "decompression-bomb", f"decompression bomb: {_one_line(error)}")
    except Exception as error:  # Pillow's plugins raise many kinds on broken headers
        return ("no", "corrupt", f"corrupt {magic or 'file'}: {_one_line(error)}")
    with image:
        fmt = image.format
        if fmt not in SUPPORTED_FORMATS:
            return _unsupported(fmt)
        width, height = image.size
        if width < min_side or height < min_side:
            return ("no", "too-small", f"too small: {width}x{height} px, training patches need "
                    f"at least {min_side}x{min_side}")
        try:
            image.load()
        except Exception as error:
            message = _one_line(error)
            kind = "truncated" if "truncated" in message.lower() else "corrupt"
            return ("no", kind, f"{kind} {fmt}: {message}")
        if fmt == "PNG" and data.rfind(_PNG_END) < 0:
            # Pillow stops after the pixel data; libpng (TensorFlow) wants the end chunk too.
            return ("no", "truncated", "truncated PNG: the IEND chunk is missing")
        channels = 1 if ImageMode.getmode(image.mode).basemode == "L" else 3
        return ("ok", len(data), sha, width, height, channels, fmt, image.mode)


def _identify_only(head: bytes) -> tuple:
    """Returns the rejection of a large file that is not a supported image, from its first bytes."""
    try:
        with Image.open(io.BytesIO(head)) as image:
            fmt = image.format
    except Exception:
        return ("no", "not-an-image", "not an image (Pillow cannot identify it)")
    return _unsupported(fmt)


def _unsupported(fmt: str | None) -> tuple:
    supported = ", ".join(SUPPORTED_FORMATS)
    return ("no", "unsupported-format", f"unsupported format {fmt} (supported: {supported})")


def _sniff(data: bytes) -> str | None:
    """Returns the supported format whose signature `data` starts with, if any."""
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _counts(counter: Counter) -> str:
    """Returns `3 too-small, 1 empty`: most frequent first."""
    ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{n} {kind}" for kind, n in ordered)

