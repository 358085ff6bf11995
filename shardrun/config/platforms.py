"""Platforms (where a worker runs, and for how long) and throughput profiles, from configs/."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shardrun.validate import Key, check_table, non_negative, positive, read_toml
from shardrun.errors import ConfigError

PLATFORM_KEYS = {
    "description": Key(str, required=True),
    "session_hours": Key((int, float), required=True, check=non_negative),
    "safety_minutes": Key((int, float), default=20, check=non_negative),
    "startup_minutes": Key((int, float), default=10, check=non_negative),
    "profile": Key(str, required=True),
    "source": Key(str, required=True),
    "terms": Key(str, default=""),
}
PROFILE_KEYS = {
    "name": Key(str, required=True),
    "device": Key(str, required=True),
    "measured": Key(str, default=""),
    "source": Key(str, default=""),
}
PROFILE_MODEL_KEYS = {
    "patches_per_second": Key((int, float), required=True, check=positive),
    "patch_size": Key(int, required=True, check=positive),
    "scale": Key(int, default=None),
    "channels": Key(int, default=None),
    "batch_size": Key(int, default=None),
}


@dataclass(frozen=True)
class Platform:
    name: str
    description: str
    session_hours: float  # 0: no limit
    safety_minutes: float
    startup_minutes: float
    profile: str
    source: str
    terms: str

    @property
    def session_seconds(self) -> float | None:
        return self.session_hours * 3600 if self.session_hours else None

    @property
    def usable_seconds(self) -> float | None:
        """Returns the training time one session offers, with the submitit-style margin."""
        if not self.session_hours:
            return None
        session = self.session_hours * 3600
        return max(60.0, min(0.8 * session, session - self.safety_minutes * 60) - self.startup_minutes * 60)


@dataclass(frozen=True)
class ModelThroughput:
    patches_per_second: float
    patch_size: int

    def at_patch_size(self, patch_size: int) -> float:
        """Returns patches/s at another patch side: convolution cost grows with patch area."""
        return self.patches_per_second * (self.patch_size / patch_size) ** 2


@dataclass(frozen=True)
class Profile:
    name: str
    device: str
    source: str
    models: dict[str, ModelThroughput]


def load_platforms(text: str | None = None, source: str = "configs/platforms.toml") -> dict[str, Platform]:
    """Returns the platforms by name, from configs/platforms.toml unless `text` is given."""
    if text is None:
        text = resources.files("shardrun.configs").joinpath("platforms.toml").read_text("utf-8")
    problems: list[str] = []
    platforms = {}
    for name, table in read_toml(text, source).items():
        values = check_table(table, f"{name}.", PLATFORM_KEYS, problems)
        if values:
            platforms[name] = Platform(name=name, **values)
    if problems:
        raise ConfigError(source, problems)
    return platforms


def profile_names() -> list[str]:
    folder = resources.files("shardrun.configs").joinpath("profiles")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str, base_dir: Path | None = None) -> Profile:
    """Returns a throughput profile: a shipped name (configs/profiles/NAME.toml) or a file path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        source = str(path)
        try:
            text = path.read_text("utf-8")
        except OSError as e:
            raise ConfigError(source, [f"cannot read throughput profile: {e.strerror}"]) from e
    else:
        resource = resources.files("shardrun.configs").joinpath("profiles", f"{name_or_path}.toml")
        if not resource.is_file():
            raise ConfigError("job.profile", [f"{name_or_path!r} is not a shipped throughput profile; "
                                              f"known: {', '.join(profile_names()) or 'none'} "
                                              "(or give a path to a .toml file)"])
        source, text = f"configs/profiles/{name_or_path}.toml", resource.read_text("utf-8")
    doc = read_toml(text, source)
    problems: list[str] = []
    head = check_table(doc.get("profile", {}), "profile.", PROFILE_KEYS, problems)
    models = {}
    for model, table in (doc.get("models") or {}).items():
        values = check_table(table, f"models.{model}.", PROFILE_MODEL_KEYS, problems)
        if values and not problems:
            models[model] = ModelThroughput(float(values["patches_per_second"]), values["patch_size"])
    if not doc.get("models"):
        problems.append("models: missing; a profile needs at least one [models.NAME] table")
    if problems:
        raise ConfigError(source, problems)
    return Profile(head["name"], head["device"], head.get("source", ""), models)
