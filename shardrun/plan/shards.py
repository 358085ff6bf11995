"""Packing accepted images into deterministic tar shards, and the manifest that indexes them.

A shard is an uncompressed POSIX (ustar) tar whose members are the images' original bytes, named
`images/<sha256>.<ext>`, with every metadata field fixed (mtime 0, mode 0o644, uid/gid 0, empty
owner names, no pax headers). So the same images always give byte-identical shards, and a shard's
exact size is known before it is built: the planner places shards by size before writing any.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shardrun.plan.dataset import EXTENSIONS, ImageInfo
from shardrun.errors import DatasetError

BLOCK = tarfile.BLOCKSIZE  # 512: a header, and the unit data is padded to
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the whole archive to a multiple of this
END_OF_ARCHIVE = 2 * BLOCK
SHARD_ID_PREFIX = "shard-"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ShardMember:
    """One image inside a shard: its tar member name and where its bytes start in the tar."""

    image: ImageInfo
    name: str  # images/<sha256>.<ext>
    offset: int  # of the image's first byte within the tar; it spans image.size bytes

    @property
    def size(self) -> int:
        return self.image.size


@dataclass(frozen=True)
class ShardSpec:
    """A shard before it is built: its content-derived id, members and exact size in bytes."""

    id: str
    members: tuple[ShardMember, ...]
    size: int


@dataclass(frozen=True)
class BuiltShard:
    """A shard as built: what `write_shard` wrote, with its hashes."""

    id: str
    size: int
    md5: str
    sha256: str
    members: tuple[ShardMember, ...]


class ShardDigest(NamedTuple):
    size: int
    md5: str
    sha256: str


def member_name(image: ImageInfo) -> str:
    """Returns the tar member name of `image`: short ASCII, the same for the same bytes."""
    return f"images/{image.sha256}.{EXTENSIONS[image.format]}"


def _padded(n: int, unit: int = BLOCK) -> int:
    return -(-n // unit) * unit


def _member_span(size: int) -> int:
    return BLOCK + _padded(size)


def _archive_size(payload: int) -> int:
    return _padded(payload + END_OF_ARCHIVE, RECORD)


def shard_size(images: Iterable[ImageInfo]) -> int:
    """Returns the exact size in bytes of the shard holding `images`."""
    return _archive_size(sum(_member_span(image.size) for image in images))


def shard_id(images: Iterable[ImageInfo]) -> str:
    """Returns `shard-<hex16>`: the first 16 hex digits of sha256 over the members' sha256 list."""
    digest = hashlib.sha256("".join(f"{image.sha256}\n" for image in images).encode("ascii"))
    return SHARD_ID_PREFIX + digest.hexdigest()[:16]


def make_shard_spec(images: Sequence[ImageInfo]) -> ShardSpec:
    """Returns the spec of one shard holding `images` in the given order."""
    members, offset = [], 0
    for image in images:
        members.append(ShardMember(image, member_name(image), offset + BLOCK))
        offset += _member_span(image.size)
    return ShardSpec(shard_id(images), tuple(members), _archive_size(offset))


def layout_shards(images: Sequence[ImageInfo], max_shard_bytes: int) -> list[ShardSpec]:
    """Returns the shards packing `images` in order, each filled greedily up to `max_shard_bytes`.

    An image too large for any shard gets a shard of its own (which is then over the limit).
    """
    if not isinstance(max_shard_bytes, int) or max_shard_bytes < RECORD:
        raise ValueError(
            f"max_shard_bytes must be an integer of at least {RECORD} (one tar record), "
            f"got {max_shard_bytes!r}"
        )
    seen: set[str] = set()
    shards: list[ShardSpec] = []
    current: list[ImageInfo] = []
    payload = 0
    for image in images:
        if image.sha256 in seen:
            raise ValueError(f"layout_shards got {image.path} twice (sha256 {image.sha256}); "
                             "pass the scan's accepted images, which hold no duplicates")
        seen.add(image.sha256)
        span = _member_span(image.size)
        if current and _archive_size(payload + span) > max_shard_bytes:
            shards.append(make_shard_spec(current))
            current, payload = [], 0
        current.append(image)
        payload += span
    if current:
        shards.append(make_shard_spec(current))
    return shards


def _header(member: ShardMember) -> bytes:
    info = tarfile.TarInfo(member.name)
    info.size = member.size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="ascii", errors="strict")


def _read_verified(image: ImageInfo) -> bytes:
    """Returns the bytes of `image`'s file; raises DatasetError if they changed since the scan."""
    try:
        with open(image.source, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as error:
        raise DatasetError(
            f"{image.path} vanished since the dataset was scanned; scan the dataset again"
        ) from error
    except OSError as error:
        raise DatasetError(f"cannot read {image.path}: {error.strerror or error}") from error
    if len(data) != image.size or hashlib.sha256(data).hexdigest() != image.sha256:
        raise DatasetError(
            f"{image.path} changed since the dataset was scanned (was {image.size} bytes, "
            f"sha256 {image.sha256[:12]}..., now {len(data)} bytes); scan the dataset again"
        )
    return data


def iter_shard_bytes(spec: ShardSpec) -> Iterator[bytes]:
    """Yields the shard's tar bytes, read from the source files and checked against the scan.

    Each file is verified whole before any of its bytes are yielded; a file that changed since
    the scan raises DatasetError naming it, so the consumer must discard what it received.
    """
    written = 0
    for member in spec.members:
        data = _read_verified(member.image)
        header = _header(member)
        padding = bytes(_padded(len(data)) - len(data))
        yield header
        yield data
        if padding:
            yield padding
        written += len(header) + len(data) + len(padding)
    yield bytes(spec.size - written)  # end-of-archive blocks and record padding


def _stream(spec: ShardSpec, sink=None) -> ShardDigest:
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    for piece in iter_shard_bytes(spec):
        md5.update(piece)
        sha.update(piece)
        size += len(piece)
        if sink is not None:
            sink.write(piece)
    if size != spec.size:  # the layout's arithmetic and tarfile's framing disagree: a bug
        raise RuntimeError(f"{spec.id}: built {size} bytes, predicted {spec.size}")
    return ShardDigest(size, md5.hexdigest(), sha.hexdigest())


def digest_shard(spec: ShardSpec) -> ShardDigest:
    """Returns (size, md5, sha256) of the shard, computed without writing it."""
    return _stream(spec)


def write_shard(spec: ShardSpec, dest_path: Path | str) -> BuiltShard:
    """Returns the built shard after writing it atomically (temp file, then rename) to dest_path."""
    dest = Path(dest_path)
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            digest = _stream(spec, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return BuiltShard(spec.id, digest.size, digest.md5, digest.sha256, spec.members)


# --- the manifest -------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestImage:
    """Where one image lives: `size` bytes at `offset` of `<shard>.tar`."""

    path: str
    shard: str
    offset: int
    size: int
    sha256: str
    width: int
    height: int
    channels: int
    format: str


@dataclass(frozen=True)
class ManifestShard:
    id: str
    size: int
    md5: str
    sha256: str
    images: tuple[ManifestImage, ...]


_IMAGE_FIELDS = {"path": str, "shard": str, "offset": int, "size": int, "sha256": str,
                 "width": int, "height": int, "channels": int, "format": str}
_SHARD_FIELDS = {"id": str, "size": int, "md5": str, "sha256": str, "images": list}


@dataclass(frozen=True)
class Manifest:
    """The dataset as shards: its fingerprint and, per shard, its hashes and images."""

    fingerprint: str
    shards: tuple[ManifestShard, ...]

    @classmethod
    def build(cls, fingerprint: str, built: Iterable[BuiltShard]) -> Manifest:
        """Returns the manifest of the built shards (in the given order)."""
        shards = []
        for shard in built:
            images = tuple(
                ManifestImage(m.image.path, shard.id, m.offset, m.image.size, m.image.sha256,
                              m.image.width, m.image.height, m.image.channels, m.image.format)
                for m in shard.members
            )
            shards.append(ManifestShard(shard.id, shard.size, shard.md5, shard.sha256, images))
        return cls(fingerprint, tuple(shards))

    @property
    def images(self) -> list[ManifestImage]:
        """Returns every image of every shard, in shard order."""
        return [image for shard in self.shards for image in shard.images]

    @property
    def training_images(self) -> list[ManifestImage]:
        """Returns every image in the order training indexes them: by path, whatever the layout.

        A job of plain runs packs the scan in path order, so this is `images` itself; a job with
        a collaborative run packs each replica's part apart (plan/parts.py), and its plain runs
        still see the images in path order, so adding a collaborative run to a job, or changing
        its replicas, moves shards but never reorders a plain run's samples."""
        return sorted(self.images, key=lambda image: image.path)

    @property
    def total_bytes(self) -> int:
        """Returns the bytes of all shards."""
        return sum(shard.size for shard in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "fingerprint": self.fingerprint,
            "shards": [
                {
                    "id": s.id, "size": s.size, "md5": s.md5, "sha256": s.sha256,
                    "images": [{name: getattr(i, name) for name in _IMAGE_FIELDS}
                               for i in s.images],
                }
                for s in self.shards
            ],
        }

    def to_json_bytes(self) -> bytes:
        """Returns the manifest as deterministic JSON: sorted keys, compact, UTF-8."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Returns the manifest `data` describes; raises DatasetError naming the first problem."""
        if not isinstance(data, dict):
            raise DatasetError("shard manifest is not valid: expected a JSON object")
        if data.get("version") != MANIFEST_VERSION:
            raise DatasetError(f"shard manifest has version {data.get('version')!r}; this "
                               f"shardrun reads version {MANIFEST_VERSION}")
        if not isinstance(data.get("fingerprint"), str) or not isinstance(data.get("shards"), list):
            raise DatasetError("shard manifest is not valid: needs 'fingerprint' and 'shards'")
        shards = []
        for n, raw in enumerate(data["shards"]):
            fields = _checked(raw, _SHARD_FIELDS, f"shards[{n}]")
            images = tuple(
                ManifestImage(**_checked(image, _IMAGE_FIELDS, f"shards[{n}].images[{k}]"))
                for k, image in enumerate(fields.pop("images"))
            )
            shards.append(ManifestShard(**fields, images=images))
        return cls(data["fingerprint"], tuple(shards))

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> Manifest:
        """Returns the manifest read from `to_json_bytes` output."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"shard manifest is not valid JSON: {error}") from error
        return cls.from_dict(data)


def _checked(raw: Any, fields: dict[str, type], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DatasetError(f"shard manifest is not valid: {where} is not an object")
    for name, kind in fields.items():
        value = raw.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DatasetError(f"shard manifest is not valid: {where}.{name} should be "
                               f"{kind.__name__}, got {value!r}")
    return {name: raw[name] for name in fields}
