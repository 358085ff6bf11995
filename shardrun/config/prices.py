"""The price file (configs/prices.toml): GPUs and their speeds, rental prices, hardware prices.

Loading validates the whole file before it complains, like the job file: every problem names its
entry (`rent[3] (Amazon V100) usd_per_hour`), the value given and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from shardrun.config.job import MODEL_NAMES
from shardrun.validate import Key, check_table, one_of, read_text_file, read_toml, show
from shardrun.errors import ConfigError

SHIPPED = "configs/prices.toml"
DEFAULT_FAMILY = "default"
FAMILIES = tuple(sorted({name.split("-")[0] for name in MODEL_NAMES}))
BASES = ("reference", "measured", "estimate")

_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


def family_of(model: str) -> str:
    """Returns the model family a speed factor is kept for: `srcnn-915` -> `srcnn`."""
    return model.split("-")[0]


def _date(value) -> str | None:
    return None if _DATE.match(value) else "a date: YYYY, YYYY-MM or YYYY-MM-DD"


def _finite_positive(value) -> str | None:
    return None if math.isfinite(value) and value > 0 else "a finite number greater than 0"


def _non_empty(value) -> str | None:
    return None if value.strip() else "a non-empty string"


FREE_KEYS = {
    "platforms": Key(list, required=True),
    "default": Key(str, required=True),
    "quota_gb": Key((int, float), required=True, check=_finite_positive),
    "quota_source": Key(str, required=True, check=_non_empty),
}
SPEED_KEYS = {"reference": Key(str, required=True), "note": Key(str, default="")}
GPU_KEYS = {
    "name": Key(str, default=""),
    "match": Key(list, required=True),
    "basis": Key(str, required=True, check=one_of(*BASES)),
    "speed": Key(dict),
    "fp32_tflops": Key((int, float), check=_finite_positive),
    "source": Key(str, required=True, check=_non_empty),
}
RENT_KEYS = {
    "provider": Key(str, required=True, check=_non_empty),
    "gpu": Key(str, required=True),
    "usd_per_hour": Key((int, float), required=True, check=_finite_positive),
    "date": Key(str, required=True, check=_date),
    "source": Key(str, required=True, check=_non_empty),
    "offer": Key(str, default=""),
    "historical": Key(bool, default=False),
    "note": Key(str, default=""),
}
BUY_KEYS = {
    "item": Key(str, required=True, check=_non_empty),
    "gpu": Key(str, required=True),
    "usd": Key((int, float), required=True, check=_finite_positive),
    "date": Key(str, required=True, check=_date),
    "source": Key(str, required=True, check=_non_empty),
    "note": Key(str, default=""),
}
TOP_KEYS = ("free", "speed", "gpus", "rent", "buy")


@dataclass(frozen=True)
class Gpu:
    id: str
    name: str
    match: tuple[str, ...]
    basis: str  # reference, measured or estimate
    speeds: dict[str, float]  # family (or "default") -> work per hour relative to the reference
    source: str
    fp32_tflops: float | None = None

    def speed(self, family: str) -> float:
        return self.speeds.get(family, self.speeds[DEFAULT_FAMILY])


@dataclass(frozen=True)
class RentOffer:
    index: int  # position in the file's [[rent]] list, for messages
    provider: str
    gpu: str
    usd_per_hour: float
    date: str
    source: str
    offer: str = ""
    historical: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.provider} {self.gpu}"


@dataclass(frozen=True)
class BuyOffer:
    index: int
    item: str
    gpu: str
    usd: float
    date: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class FreeTier:
    platforms: tuple[str, ...]
    default: str
    quota_gb: float
    quota_source: str


@dataclass(frozen=True)
class Prices:
    source: str
    free: FreeTier
    reference: str
    gpus: dict[str, Gpu]
    rent: tuple[RentOffer, ...]
    buy: tuple[BuyOffer, ...] = field(default_factory=tuple)

    def gpu_for_device(self, device: str) -> Gpu | None:
        """Returns the GPU a device description names (`Tesla T4 (GPU)` -> T4), or None.

        A match is one of the GPU's `match` strings as a whole word (case-insensitive; a space
        may also be a hyphen or nothing); the longest match wins, so `RTX 4060 Ti` would beat
        `RTX 4060` if both were listed.
        """
        best: tuple[int, Gpu] | None = None
        for gpu in self.gpus.values():
            for pattern in gpu.match:
                words = [re.escape(w) for w in pattern.split()]
                regex = r"(?<![A-Za-z0-9])" + r"[\s-]?".join(words) + r"(?![A-Za-z0-9])"
                if re.search(regex, device, re.IGNORECASE) and (best is None or len(pattern) > best[0]):
                    best = (len(pattern), gpu)
        return best[1] if best else None


def _read(path: str | Path | None) -> tuple[str, str]:
    if path is None:
        return SHIPPED, resources.files("shardrun.configs").joinpath("prices.toml").read_text("utf-8")
    return str(path), read_text_file(Path(path), missing="no such price file")


def load_prices(path: str | Path | None = None) -> Prices:
    """Returns the price file at `path` (default: the shipped configs/prices.toml).

    Raises ConfigError listing every problem, each naming its entry and what is wrong.
    """
    source, text = _read(path)
    return parse_prices(text, source)


def parse_prices(text: str, source: str = "<prices>") -> Prices:
    """Returns the prices described by TOML `text`, or raises ConfigError listing every problem."""
    doc = read_toml(text, source)
    problems: list[str] = []
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown table; allowed: " + ", ".join(TOP_KEYS))
    free = _free(doc, problems)
    reference = check_table(doc.get("speed", {}), "speed.", SPEED_KEYS, problems).get("reference")
    gpus = _gpus(doc, reference, problems)
    known = set(doc["gpus"]) if isinstance(doc.get("gpus"), dict) else set()
    rent = tuple(RentOffer(i, **values) for i, values in _offers(doc, "rent", RENT_KEYS, "provider", known, problems))
    buy = tuple(BuyOffer(i, **values) for i, values in _offers(doc, "buy", BUY_KEYS, "item", known, problems))
    every_rent_valid = len(rent) == len(doc.get("rent", [])) if isinstance(doc.get("rent", []), list) else False
    if every_rent_valid and not any(not r.historical for r in rent):
        problems.append("rent: needs at least one [[rent]] entry that is not historical (a price you can pay today)")
    if problems:
        raise ConfigError(source, problems)
    return Prices(source, free, reference, gpus, rent, buy)


def _free(doc: dict, problems: list[str]) -> FreeTier | None:
    if "free" not in doc:
        problems.append("free: missing; add a [free] table (platforms, default, quota_gb, quota_source)")
        return None
    values = check_table(doc["free"], "free.", FREE_KEYS, problems)
    platforms = values.get("platforms") or []
    if not all(isinstance(p, str) for p in platforms):
        problems.append(f"free.platforms = {platforms!r}: must be a list of platform names")
        return None
    return FreeTier(tuple(platforms), values.get("default") or "", float(values.get("quota_gb") or 0),
                    values.get("quota_source") or "")


def _gpus(doc: dict, reference: str | None, problems: list[str]) -> dict[str, Gpu]:
    tables = doc.get("gpus")
    if not isinstance(tables, dict) or not tables:
        problems.append("gpus: missing; add a [gpus.NAME] table for each GPU the prices refer to")
        return {}
    if reference is not None and reference not in tables:
        problems.append(f"speed.reference = {reference!r}: not one of the [gpus] tables ("
                        + ", ".join(sorted(tables)) + ")")
        reference = None
    ref_tflops = tables[reference].get("fp32_tflops") if reference and isinstance(tables[reference], dict) else None
    gpus = {}
    for gpu_id, table in tables.items():
        where = f"gpus.{_key(gpu_id)}."
        before = len(problems)
        values = check_table(table, where, GPU_KEYS, problems)
        match = values.get("match") or []
        if not match or not all(isinstance(m, str) and m.strip() for m in match):
            problems.append(f"{where}match = {show(match)}: must be a non-empty list of strings "
                            "found in device names, e.g. [\"T4\"]")
        speeds = _speeds(values, where, gpu_id == reference, ref_tflops, problems)
        if values.get("basis") == "reference" and gpu_id != reference:
            problems.append(f"{where}basis = 'reference': only speed.reference ({reference!r}) is the reference")
        if len(problems) == before:
            gpus[gpu_id] = Gpu(gpu_id, values["name"] or gpu_id, tuple(match), values["basis"], speeds,
                               values["source"], float(values["fp32_tflops"]) if values["fp32_tflops"] else None)
    return gpus


def _speeds(values: dict, where: str, is_reference: bool, ref_tflops, problems: list[str]) -> dict[str, float]:
    """Returns the GPU's speed per family, from its `speed` table or its FP32 peak over the reference's."""
    table = values.get("speed")
    if table is None:
        tflops = values.get("fp32_tflops")
        if not tflops or tflops <= 0:
            problems.append(f"{where}speed: missing; give speed = {{ default = ... }} or fp32_tflops (an estimate)")
            return {}
        if not isinstance(ref_tflops, (int, float)) or isinstance(ref_tflops, bool) or ref_tflops <= 0:
            problems.append(f"{where}fp32_tflops: cannot give a speed because the reference GPU has no fp32_tflops")
            return {}
        return {DEFAULT_FAMILY: float(tflops) / float(ref_tflops)}
    speeds = {}
    for family, speed in table.items():
        if family != DEFAULT_FAMILY and family not in FAMILIES:
            problems.append(f"{where}speed.{family}: unknown model family; allowed: "
                            + ", ".join((DEFAULT_FAMILY,) + FAMILIES))
        elif isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) or speed <= 0:
            problems.append(f"{where}speed.{family} = {show(speed)}: must be a number greater than 0")
        elif is_reference and speed != 1:
            problems.append(f"{where}speed.{family} = {show(speed)}: must be 1, "
                            "the reference GPU's speed by definition")
        else:
            speeds[family] = float(speed)
    if DEFAULT_FAMILY not in table:
        problems.append(f"{where}speed.{DEFAULT_FAMILY}: missing (the speed for every family not listed)")
    return speeds


def _offers(doc: dict, name: str, spec: dict[str, Key], label_key: str, gpus: set[str],
            problems: list[str]) -> list[tuple[int, dict]]:
    items = doc.get(name, [])
    if not isinstance(items, list):
        problems.append(f"{name}: must be a list of [[{name}]] tables, got {items!r}")
        return []
    offers = []
    for i, item in enumerate(items):
        label = ""
        if isinstance(item, dict):
            label = " ".join(str(item.get(k, "?")) for k in (label_key, "gpu"))
        where = f"{name}[{i}] ({label}) " if label else f"{name}[{i}]."
        before = len(problems)
        values = check_table(item, where, spec, problems)
        gpu = values.get("gpu")
        if isinstance(gpu, str) and gpu not in gpus:
            problems.append(f"{where}gpu = {gpu!r}: unknown GPU, not one of the [gpus] tables ("
                            + (", ".join(sorted(gpus)) or "none") + ")")
        if len(problems) == before:
            offers.append((i, {k: (float(v) if k in ("usd_per_hour", "usd") else v) for k, v in values.items()}))
    return offers


def _key(gpu_id: str) -> str:
    return gpu_id if re.match(r"^[A-Za-z0-9_-]+$", gpu_id) else f'"{gpu_id}"'


