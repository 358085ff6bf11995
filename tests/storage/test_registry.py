"""The store registry: schemes to backends, imported lazily, each owning its URL and job-file keys."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shardrun.config.job import parse_job
from shardrun.errors import ConfigError, StoreError
from shardrun.storage import registry
from shardrun.storage.account import Account
from shardrun.storage.backend import Backend
from shardrun.storage.local import BACKEND as LOCAL, LocalStore
from shardrun.storage.memory import BACKEND as MEMORY, MemoryStore
from shardrun.validate import Key
from tests.conftest import job_text

ROOT = Path(__file__).resolve().parents[2]


class FakeBackend(Backend):
    """A backend of `fake://NAME` with a key of its own, opening memory stores."""

    scheme = "fake"
    account_keys = {"profile": Key(str)}

    def settings(self, account, job, base_dir):
        return account.get("profile")

    def check(self, account):
        return [] if account.settings != "bad" else ["profile = \"bad\": must not be bad"]

    def open(self, account):
        return MemoryStore.named(f"fake-{self.location(account.url)}", account.quota_bytes)

    def describe(self, account):
        return f"profile {account.settings}"


class NeedsAPackage(FakeBackend):
    """Loads fine (a light module) but needs a package to open a store, like the Drive backend."""

    def open(self, account):
        import a_package_shardrun_never_installs  # noqa: F401

        raise AssertionError("unreachable")


@pytest.fixture
def fake_scheme():
    """Registers the `fake` scheme through the registry's public API, for one test."""
    def register(target, install_hint=None):
        registry.register("fake", target, install_hint)

    yield register
    registry.unregister("fake")


def test_the_table_lists_the_schemes_in_order_and_refuses_to_replace_one_silently():
    assert registry.schemes() == ("local", "memory", "drive", "s3", "gs", "fsspec")
    with pytest.raises(ValueError, match="'local' is registered already"):
        registry.register("local", FakeBackend())


@pytest.mark.parametrize("url, message", [
    ("ftp://bucket", "store URL 'ftp://bucket' has unknown scheme 'ftp'; expected one of: local, memory, drive, "
                     "s3, gs, fsspec"),
    ("bucket", "store URL 'bucket' has no scheme; expected one of: local://..., memory://..., drive://..., "
               "s3://..., gs://..., fsspec://..."),
    ("drive://", "store URL 'drive://' names no location after 'drive://'"),
])
def test_a_url_the_registry_cannot_open_names_the_url_and_the_schemes(url, message):
    with pytest.raises(StoreError) as caught:
        registry.open_store(Account("a", url))
    assert str(caught.value) == message
    with pytest.raises(StoreError, match="unknown store scheme 'ftp'; expected one of: local, memory, drive, s3, gs, fsspec"):
        registry.backend("ftp")


def test_backends_are_imported_on_first_use_and_the_drive_client_only_to_open_a_drive_store(tmp_path):
    """Run in a fresh interpreter, so no other test has imported a backend already."""
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent("""
        [job]
        name = "j"
        data = "images/"
        [[accounts]]
        name = "alice"
        store = "drive://1AbC"
        auth = "oauth"
        [[runs]]
        name = "r"
        model = "espcn"
        scale = 2
        channels = 1
        epochs = 1
        batch_size = 4
        patch_size = 16
    """))
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        def loaded(prefix):
            return sorted(m for m in sys.modules if m == prefix or m.startswith(prefix + "."))

        from shardrun.storage import registry
        from shardrun.storage.account import Account
        assert loaded("shardrun.storage.local") == loaded("shardrun.storage.memory") == [], "imported early"
        registry.open_store(Account("a", "memory://lazy"))
        assert loaded("shardrun.storage.memory") and not loaded("shardrun.storage.local"), loaded("shardrun")
        assert not loaded("shardrun.storage.drive"), loaded("shardrun.storage.drive")

        from shardrun.config.job import load_job
        job = load_job({str(job)!r}, platforms={{"colab-free": None}})
        assert loaded("shardrun.storage.drive") == ["shardrun.storage.drive", "shardrun.storage.drive.backend",
                                                   "shardrun.storage.drive.settings"]
        assert not loaded("googleapiclient") and not loaded("google.oauth2"), "the Drive client came with the keys"
        store = job.open_store(job.home)
        assert "shardrun.storage.drive.store" in sys.modules and loaded("googleapiclient")
        assert type(store).__name__ == "DriveStore" and store.folder_id == "1AbC"
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_backend_whose_module_cannot_be_imported_says_what_to_install(fake_scheme, tmp_path, monkeypatch):
    (tmp_path / "fake_backend_missing.py").write_text("import a_package_shardrun_never_installs\nBACKEND = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_scheme("fake_backend_missing:BACKEND", install_hint="pip install shardrun-fake")
    with pytest.raises(StoreError) as caught:
        registry.open_store(Account("a", "fake://bucket"))
    message = str(caught.value)
    assert message.startswith("fake:// stores need a package that is not installed")
    assert "a_package_shardrun_never_installs" in message and message.endswith("; pip install shardrun-fake")


def test_a_package_missing_when_the_store_opens_gives_the_hint_too(fake_scheme):
    fake_scheme(NeedsAPackage(), install_hint="pip install shardrun-fake")
    assert registry.describe_sign_in(Account("a", "fake://bucket", settings="p")) == "profile p"
    with pytest.raises(StoreError, match=r"^fake:// stores need a package .*; pip install shardrun-fake$"):
        registry.open_store(Account("a", "fake://bucket"))


def test_the_drive_row_carries_its_install_hint():
    assert "pip install google-api-python-client" in registry.DRIVE_HINT


def test_a_registered_backend_brings_its_scheme_and_keys_to_the_job_file(fake_scheme, job_dir):
    fake_scheme(FakeBackend())
    text = job_text(accounts=[("alice", 15), ("bob", 15)]).replace(
        'store = "local://stores/alice"', 'store = "fake://bucket"\nprofile = "team"')
    job = parse_job(text, job_dir)
    alice = job.store_account(job.account("alice"))
    assert (alice.url, alice.settings, alice.job, alice.base_dir) == ("fake://bucket", "team", "test-job", job_dir)
    assert registry.describe_sign_in(alice) == "profile team"
    store = job.open_store(job.account("alice"))
    assert store is MemoryStore.named("fake-bucket") and store.quota_bytes == 15 * 10**9

    refused = text.replace('store = "local://stores/bob"', 'store = "local://stores/bob"\nprofile = "team"')
    refused = refused.replace('profile = "team"', 'profile = "bad"', 1)
    with pytest.raises(ConfigError) as caught:
        parse_job(refused, job_dir)
    assert caught.value.problems == ['accounts[0].profile = "bad": must not be bad',
                                     "accounts[1].profile: only s3:// or gs:// or fsspec:// or fake:// stores sign in; remove it for "
                                     "'local://stores/bob'"]
    unknown = text.replace("fake://bucket", "ftp://bucket")
    with pytest.raises(ConfigError) as caught:
        parse_job(unknown, job_dir)
    assert ("accounts[0].store = 'ftp://bucket': must be a store URL: local://... or memory://... or drive://... "
            "or s3://... or gs://... or fsspec://... or fake://...") in caught.value.problems


def test_the_local_backend_parses_its_own_urls(tmp_path):
    assert LOCAL.root("local:///srv/alice", tmp_path) == Path("/srv/alice")
    assert LOCAL.root("local://stores/alice", tmp_path) == tmp_path / "stores" / "alice"
    assert LOCAL.root("local://my%20stores/a", tmp_path) == tmp_path / "my stores" / "a"
    assert registry.absolute_url("local://stores/alice", tmp_path) == f"local://{tmp_path}/stores/alice"
    assert registry.absolute_url("local:///srv/alice", tmp_path) == "local:///srv/alice"
    assert registry.absolute_url("memory://a", tmp_path) == "memory://a"
    store = registry.open_store(Account("a", "local://stores/alice", 5, base_dir=tmp_path))
    assert isinstance(store, LocalStore) and store.root == tmp_path / "stores" / "alice" and store.quota_bytes == 5
    assert store.url == "local://stores/alice"  # as the job file says, for messages
    assert LOCAL.describe(Account("a", "local:///x")) == "local folder (this machine's user)"
    assert (LOCAL.account_keys, LOCAL.job_keys, LOCAL.settings({}, {}, tmp_path)) == ({}, {}, None)


def test_the_memory_backend_opens_one_store_per_name():
    store = registry.open_store(Account("a", "memory://registry-one", 10))
    assert store is registry.open_store(Account("b", "memory://registry-one")) and store.quota_bytes == 10
    assert store is not registry.open_store(Account("a", "memory://registry-two"))
    assert MEMORY.location("memory://registry-one") == "registry-one"
    assert MEMORY.describe(Account("a", "memory://x")) == "in-process memory"
    assert MEMORY.sign_in_method(Account("a", "memory://x")) is None


def test_open_store_by_url(tmp_path):
    store = registry.open_store(Account("a", f"local://{tmp_path}/acct", quota_bytes=123))
    assert isinstance(store, LocalStore) and store.quota_bytes == 123
    relative = registry.open_store(Account("a", "local://rel/acct", base_dir=tmp_path))
    assert relative.root == tmp_path / "rel" / "acct"
    assert registry.open_store(Account("a", "memory://same")) is registry.open_store(Account("b", "memory://same"))


@pytest.mark.parametrize(
    "url, message",
    [("ftp://bucket", "unknown scheme 'ftp'"), ("no-scheme", "has no scheme"), ("local://", "names no location")],
)
def test_open_store_rejects_bad_urls(url, message):
    with pytest.raises(StoreError, match=message):
        registry.open_store(Account("a", url))
