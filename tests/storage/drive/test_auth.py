"""Drive keys in the job file: sign-in settings per account and the [job] drive_* keys."""

from __future__ import annotations

import os
import stat as stat_module
from pathlib import Path

import pytest

from shardrun.config.job import parse_job
from shardrun.errors import ConfigError
from shardrun.storage.drive.auth import DriveAccount, choose_method, describe, write_token_file
from shardrun.storage.drive.settings import token_env_var
from tests.conftest import SMALL_RUN, job_text


def job(accounts: str, job_keys: str = "") -> str:
    return job_text("j", accounts=accounts, runs=[SMALL_RUN], job_lines=job_keys, platform=None)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_job(text, Path("/jobs"), "job.toml")
    return caught.value.problems


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("SHARDRUN_DRIVE_ROOT_URL", raising=False)


def test_drive_accounts_and_keys_parse_into_the_job():
    parsed = parse_job(job('[[accounts]]\nname = "alice"\nstore = "drive://1AbC"\nauth = "oauth"\n'
                           'credentials = "tokens/alice.json"\nclient_secrets = "client.json"\n',
                           'drive_root_url = "http://127.0.0.1:9/"\ndrive_chunk_mib = 16\ndrive_retries = 3'),
                       Path("/jobs"), "job.toml")
    account = parsed.account("alice")
    store_account = parsed.store_account(account)
    settings = store_account.settings
    assert (store_account.name, store_account.url, store_account.job) == ("alice", "drive://1AbC", "j")
    assert settings.credentials == Path("/jobs/tokens/alice.json") and settings.client_secrets == Path("/jobs/client.json")
    assert settings.root_url == "http://127.0.0.1:9/" and settings.chunk_mib == 16 and settings.retries == 3
    assert (settings.retry_seconds, settings.auth) == (300.0, "oauth")


def test_a_fixed_token_needs_an_endpoint_override_and_is_never_echoed():
    found = problems_of(job('[[accounts]]\nname = "alice"\nstore = "drive://1AbC"\ntoken = "ya29.SECRET"\n'))
    assert len(found) == 1 and found[0].startswith("accounts[0].token: a fixed bearer token is only allowed with")
    assert "SECRET" not in found[0]


def test_the_environment_override_allows_a_fixed_token(monkeypatch):
    monkeypatch.setenv("SHARDRUN_DRIVE_ROOT_URL", "http://127.0.0.1:9/")
    parsed = parse_job(job('[[accounts]]\nname = "alice"\nstore = "drive://1AbC"\ntoken = "ya29.SECRET"\n'),
                       Path("/jobs"))
    assert "SECRET" not in repr(parsed) and parsed.accounts[0].settings.token == "ya29.SECRET"


def test_bad_sign_in_settings_are_all_reported():
    found = problems_of(job(
        '[[accounts]]\nname = "a"\nstore = "drive://1"\nauth = "password"\n'
        '[[accounts]]\nname = "b"\nstore = "drive://2"\nauth = "service-account"\n'
        '[[accounts]]\nname = "c"\nstore = "local://c"\nauth = "oauth"\n'
        '[[accounts]]\nname = "d"\nstore = "drive://4"\nauth = "token"\n',
        'drive_root_url = "127.0.0.1:9"\ndrive_chunk_mib = 0'))
    joined = "\n".join(found)
    assert len(found) == 6
    assert "accounts[0].auth = 'password': must be one of 'colab', 'oauth', 'service-account', 'token'" in joined
    assert 'accounts[1].auth = "service-account": needs credentials' in joined
    assert "accounts[2].auth: only drive:// stores sign in" in joined
    assert 'accounts[3].auth = "token": needs token = "..." or $SHARDRUN_DRIVE_TOKEN_D' in joined
    assert "job.drive_root_url = '127.0.0.1:9': must be an http(s):// URL" in joined
    assert "job.drive_chunk_mib = 0: must be a number greater than 0" in joined


def test_how_an_account_signs_in_is_chosen_from_its_settings_and_context(monkeypatch, tmp_path):
    monkeypatch.setenv("SHARDRUN_TOKEN_DIR", str(tmp_path))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    alice = DriveAccount(name="alice.b-2", job="j")
    assert token_env_var("alice.b-2") == "SHARDRUN_DRIVE_TOKEN_ALICE_B_2"
    assert choose_method(alice) == "oauth" and describe(alice) == f"oauth ({tmp_path / 'j-alice.b-2.json'})"
    monkeypatch.setenv("SHARDRUN_DRIVE_TOKEN_ALICE_B_2", "t")
    assert choose_method(alice) == "token" and describe(alice) == "token ($SHARDRUN_DRIVE_TOKEN_ALICE_B_2)"
    monkeypatch.delenv("SHARDRUN_DRIVE_TOKEN_ALICE_B_2")
    key = tmp_path / "sa.json"
    key.write_text('{"type": "service_account"}')
    assert choose_method(DriveAccount(name="a", credentials=key)) == "service-account"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab")
    assert choose_method(alice) == "colab"
    assert choose_method(DriveAccount(name="a", auth="oauth")) == "oauth"  # said explicitly: no guessing


def test_token_files_are_written_for_their_owner_only(tmp_path):
    from google.oauth2.credentials import Credentials

    path = tmp_path / "deep" / "alice.json"
    write_token_file(path, Credentials(token="t", refresh_token="r", client_id="c", client_secret="s",
                                       token_uri="https://oauth2.googleapis.com/token"))
    assert stat_module.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name != "alice.json"]  # no temporary file left


def _sign_in(emu, tmp_path, monkeypatch, code: str) -> tuple[list[str], dict, DriveAccount]:
    """Runs `login` with the user's own client id; the "browser" sends `code` to the redirect server.
    Returns the URLs shown, {"path": token file} or {"error": AuthError}, and the account."""
    import json
    import threading
    import urllib.parse
    import urllib.request

    from shardrun.storage.drive.auth import AuthError, login

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the emulator's token endpoint is plain http
    secrets_file = tmp_path / "client.json"
    secrets_file.write_text(json.dumps({"installed": {
        "client_id": "my-own-client.apps.googleusercontent.com", "client_secret": "cs",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": emu.token_uri,
        "redirect_uris": ["http://localhost"]}}))
    account = DriveAccount(name="alice", job="j", client_secrets=secrets_file, credentials=tmp_path / "tok.json")
    shown, outcome = [], {}

    def answer_as_the_browser(url):
        shown.append(url)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        redirect = f"{query['redirect_uri'][0]}?code={code}&state={query['state'][0]}"
        threading.Thread(target=lambda: urllib.request.urlopen(redirect, timeout=10).read(), daemon=True).start()

    def run():
        try:
            outcome["path"] = login(account, answer_as_the_browser, open_browser=False, timeout_s=20)
        except AuthError as e:
            outcome["error"] = e

    flow = threading.Thread(target=run)
    flow.start()
    flow.join(30)
    return shown, outcome, account


def test_login_shows_the_sign_in_url_and_a_refused_code_is_one_clear_error(drive_emulator, tmp_path, monkeypatch):
    """The installed-app flow with the user's own client id, up to the token exchange: the URL
    goes to the prompt (no browser needed), the redirect server takes the answer, and a code the
    token endpoint refuses ends in one AuthError line with nothing written."""
    import urllib.parse

    shown, outcome, _ = _sign_in(drive_emulator, tmp_path, monkeypatch, "not-a-real-code")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(shown[0]).query)
    assert query["client_id"] == ["my-own-client.apps.googleusercontent.com"]
    assert query["scope"] == ["https://www.googleapis.com/auth/drive"]
    message = str(outcome["error"])
    assert message.startswith("Drive account 'alice': signing in failed") and "\n" not in message
    assert drive_emulator.calls[(None, "oauth.token")] == 1  # the code went to the client file's token_uri
    assert not (tmp_path / "tok.json").exists()


def test_login_writes_a_private_token_file_that_signs_in_and_refreshes(drive_emulator, tmp_path, monkeypatch):
    """The whole installed-app flow: the code is exchanged, the token file (0600) holds a refresh
    token, and a store opened from that file alone reaches the account, even once the access
    token has expired."""
    import json

    from shardrun.storage.account import Account
    from shardrun.storage.drive.settings import DriveSettings
    from shardrun.storage.registry import open_store
    from tests.drive_accounts import new_drive_account

    emu = drive_emulator
    alice = new_drive_account(emu, name="alice")
    shown, outcome, account = _sign_in(emu, tmp_path, monkeypatch, emu.authorization_code(alice.email))
    path = outcome["path"]
    assert path == tmp_path / "tok.json" and stat_module.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] and saved["client_id"] == "my-own-client.apps.googleusercontent.com"
    emu.expire_token(saved["token"])
    store = open_store(Account("alice", f"drive://{alice.folder}", job="j",
                               settings=DriveSettings(auth="oauth", credentials=path, root_url=emu.root_url)))
    assert store.identity().startswith(alice.email)
    assert emu.calls[(None, "oauth.token")] == 2  # the code's exchange, then one refresh


def test_the_drive_backend_owns_its_urls_keys_and_checks(monkeypatch):
    from shardrun.storage.account import Account
    from shardrun.storage.drive.backend import BACKEND
    from shardrun.storage.drive.settings import DriveSettings

    assert BACKEND.folder_id("drive://1AbC/") == "1AbC"
    assert list(BACKEND.account_keys) == ["auth", "token", "credentials", "client_secrets"]
    assert list(BACKEND.job_keys) == ["drive_root_url", "drive_chunk_mib", "drive_retries", "drive_retry_seconds"]
    settings = BACKEND.settings({"auth": "oauth", "token": None, "credentials": "~/t.json", "client_secrets": "c.json"},
                                {"drive_root_url": None, "drive_chunk_mib": 2, "drive_retries": 1,
                                 "drive_retry_seconds": 9}, Path("/jobs"))
    assert settings == DriveSettings(auth="oauth", credentials=Path("~/t.json").expanduser(),
                                     client_secrets=Path("/jobs/c.json"), chunk_mib=2, retries=1, retry_seconds=9.0)
    assert BACKEND.check(Account("a", "drive://1", settings=settings)) == []
    secret = Account("a", "drive://1", settings=DriveSettings(token="ya29.SECRET"))
    assert [p.split(":")[0] for p in BACKEND.check(secret)] == ["token"]
    assert "SECRET" not in repr(secret) and "SECRET" not in BACKEND.describe(secret)
    monkeypatch.setenv("SHARDRUN_DRIVE_ROOT_URL", "http://127.0.0.1:9/")
    assert BACKEND.check(secret) == [] and BACKEND.describe(secret) == "token (job file)"
    assert BACKEND.sign_in_method(secret) == "token"
    assert BACKEND.check(Account("b", "drive://1", settings=DriveSettings(auth="service-account"))) == [
        'auth = "service-account": needs credentials = "path/to/key.json"']
