"""How a Drive account signs in: the settings, where credentials come from, and the token files.

An account signs in one of four ways (`auth` in the job file):

- `colab`: inside a Colab notebook, the notebook's own sign-in (`google.colab.auth`), then
  application default credentials with the Drive scope. The person running the notebook signs in
  once, by hand; shardrun never automates a login.
- `oauth`: the installed-app flow with the user's own OAuth client id (`client_secrets`), run by
  `shardrun accounts login`. Its token file (one per account, mode 0600) is refreshed and
  rewritten when the access token expires. An existing pydrive2 / oauth2client credentials file
  is read as well, so a user of pydrive2 need not sign in again.
- `service-account`: a service account's JSON key (`credentials`), for Shared Drives.
- `token`: a fixed bearer token, allowed only with an endpoint override (an emulator).

Secrets never leave this module's objects: `DriveAccount` keeps the token out of its repr, and
every message names the account and the file, never what is in it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import webbrowser
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from google.oauth2.credentials import Credentials

from shardrun.errors import PermissionDenied
from shardrun.storage.account import Account
from shardrun.storage.drive.settings import (
    METHODS,
    ROOT_URL_ENV,
    env_token,
    root_url_override,
    settings_of,
    token_env_var,
)

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
TOKEN_DIR_ENV = "SHARDRUN_TOKEN_DIR"

_FILE_LOCK = threading.Lock()


class AuthError(PermissionDenied):
    """An account cannot sign in to Drive: no credentials, unreadable ones, or refused ones."""


class NotSignedIn(AuthError):
    """This machine holds no credentials for the account (no token file, no token)."""


@dataclass(frozen=True)
class DriveAccount:
    """How one account signs in to Drive; settings only (the token is kept out of repr)."""

    name: str | None = None  # the account's name in the job; None: the home store of a job URL
    job: str | None = None
    auth: str | None = None  # one of METHODS; None: chosen from context (see choose_method)
    token: str | None = field(default=None, repr=False)
    credentials: Path | None = None  # token file (oauth) or service-account key
    client_secrets: Path | None = None  # the user's OAuth client id, for `accounts login`
    root_url: str | None = None  # endpoint override from the job file
    # Signs in as this account instead where this one has no credentials here: a worker reads
    # and writes every account's folder as the person running it.
    fallback: "DriveAccount | None" = None

    @classmethod
    def of(cls, account: Account) -> "DriveAccount":
        """Returns how the account (and its fallback) signs in, from its Drive settings."""
        settings = settings_of(account)
        path = lambda value: Path(value).expanduser() if value else None  # noqa: E731
        return cls(name=account.name, job=account.job, auth=settings.auth, token=settings.token,
                   credentials=path(settings.credentials), client_secrets=path(settings.client_secrets),
                   root_url=settings.root_url, fallback=cls.of(account.fallback) if account.fallback else None)

    @property
    def label(self) -> str:
        return f"Drive account {self.name!r}" if self.name else "the Drive account"

    @property
    def effective_root_url(self) -> str | None:
        return root_url_override(self.root_url)


def token_dir() -> Path:
    """Returns the folder of OAuth token files (SHARDRUN_TOKEN_DIR, else ~/.config/shardrun/tokens)."""
    if os.environ.get(TOKEN_DIR_ENV):
        return Path(os.environ[TOKEN_DIR_ENV]).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "shardrun" / "tokens"


def default_token_path(job: str | None, account: str | None) -> Path:
    """Returns where `accounts login` keeps the account's token: <job>-<account>.json."""
    stem = "-".join(part for part in (job, account) if part) or "default"
    return token_dir() / f"{stem}.json"


def in_colab() -> bool:
    """Returns whether this process runs inside a Colab notebook."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def _looks_like_service_account(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("type") == "service_account"
    except (OSError, ValueError, AttributeError):
        return False


def choose_method(account: DriveAccount) -> str:
    """Returns how the account signs in: its `auth` if given, else the first that applies of
    a token (job file or SHARDRUN_DRIVE_TOKEN_<ACCOUNT>), a `credentials` file (service-account
    key or OAuth token by its content), Colab, an existing token file, GOOGLE_APPLICATION_CREDENTIALS
    (service account), and finally `oauth` (which needs `shardrun accounts login`)."""
    if account.auth:
        return account.auth
    if account.token or env_token(account.name):
        return "token"
    if account.credentials:
        return "service-account" if _looks_like_service_account(account.credentials) else "oauth"
    if in_colab():
        return "colab"
    if default_token_path(account.job, account.name).exists():
        return "oauth"
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return "service-account"
    return "oauth"


def token_path(account: DriveAccount) -> Path:
    """Returns the OAuth token file the account uses (its `credentials`, else the default)."""
    return account.credentials or default_token_path(account.job, account.name)


def describe(account: DriveAccount) -> str:
    """Returns how the account signs in, for `accounts list` (no secret in it)."""
    method = choose_method(account)
    if method == "token":
        source = "job file" if account.token else f"${token_env_var(account.name)}"
        return f"token ({source})"
    if method == "oauth":
        return f"oauth ({token_path(account)})"
    if method == "service-account":
        key = account.credentials or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        return f"service-account ({key})"
    return "colab"


# -- loading credentials -------------------------------------------------------------------------


def load_credentials(account: DriveAccount):
    """Returns google-auth credentials for the account (or its fallback, where this machine has
    none of its own), or raises AuthError saying what to do."""
    try:
        return _load_own_credentials(account)
    except NotSignedIn:
        if account.fallback is None:
            raise
        return load_credentials(account.fallback)


def _load_own_credentials(account: DriveAccount):
    method = choose_method(account)
    if method not in METHODS:
        raise AuthError(f"{account.label}: unknown auth {method!r}; expected one of {', '.join(METHODS)}")
    if method == "token":
        return _token_credentials(account)
    if method == "colab":
        return _colab_credentials(account)
    if method == "service-account":
        return _service_account_credentials(account)
    return _oauth_credentials(account)


def _token_credentials(account: DriveAccount):
    if not account.effective_root_url:
        raise AuthError(f"{account.label}: a fixed bearer token is only accepted with an endpoint override "
                        f"(drive_root_url or ${ROOT_URL_ENV}); sign in with auth = \"oauth\" instead")
    token = account.token or env_token(account.name)
    if not token:
        raise NotSignedIn(f"{account.label}: auth = \"token\" but no token is set: add token = \"...\" to the "
                        f"account or set ${token_env_var(account.name)}")
    return Credentials(token=token)


def _colab_credentials(account: DriveAccount):
    try:
        from google.colab import auth as colab_auth  # type: ignore[import-not-found]
    except ImportError as e:
        raise AuthError(f"{account.label}: auth = \"colab\" works only inside a Colab notebook; "
                        "elsewhere use auth = \"oauth\"") from e
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    colab_auth.authenticate_user()  # the notebook's own sign-in dialog, answered by its user
    try:
        credentials, _ = google.auth.default(scopes=[DRIVE_SCOPE])
    except DefaultCredentialsError as e:
        raise AuthError(f"{account.label}: Colab's sign-in gave no credentials; run the sign-in cell again") from e
    return credentials


def _service_account_credentials(account: DriveAccount):
    from google.oauth2 import service_account

    path = account.credentials or (Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"])
                                   if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") else None)
    if path is None:
        raise AuthError(f"{account.label}: auth = \"service-account\" needs credentials = \"path/to/key.json\"")
    try:
        return service_account.Credentials.from_service_account_file(str(path), scopes=[DRIVE_SCOPE])
    except FileNotFoundError as e:
        raise AuthError(f"{account.label}: no service-account key at {path}") from e
    except (ValueError, KeyError) as e:
        raise AuthError(f"{account.label}: {path} is not a service-account key (JSON from the Cloud console)") from e


def _oauth_credentials(account: DriveAccount):
    path = token_path(account)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotSignedIn(f"{account.label} has not signed in: no token file at {path}; run "
                          f"`shardrun accounts login JOBFILE --account {account.name or 'NAME'}`") from None
    except (OSError, ValueError) as e:
        raise AuthError(f"{account.label}: cannot read the token file {path} ({type(e).__name__}); "
                        "delete it and run `shardrun accounts login` again") from None
    try:
        return _credentials_from_info(info, path, allow_token_uri=bool(account.effective_root_url))
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"{account.label}: {path} is neither a shardrun token file nor a pydrive2 credentials "
                        "file; delete it and run `shardrun accounts login` again") from None


def _credentials_from_info(info: dict, path: Path, allow_token_uri: bool):
    """Returns refreshing credentials from a token file: google-auth's authorized-user JSON, or
    the oauth2client JSON that pydrive2's SaveCredentialsFile writes."""
    save_to: Path | None = path
    if "access_token" in info and "token" not in info:  # oauth2client / pydrive2
        save_to = None  # pydrive2 still reads this file: refresh in memory, never rewrite it in our format
        expiry = info.get("token_expiry")
        info = {"token": info.get("access_token"), "refresh_token": info["refresh_token"],
                "client_id": info["client_id"], "client_secret": info["client_secret"],
                "token_uri": info.get("token_uri"), "scopes": info.get("scopes"),
                "expiry": expiry.rstrip("Z") + "Z" if isinstance(expiry, str) else None}
    expiry = info.get("expiry")
    parsed = (datetime.fromisoformat(expiry.rstrip("Z")).replace(tzinfo=None) if expiry else None)
    # A token file may name its token endpoint only where the Drive endpoint is overridden (an
    # emulator): otherwise a planted file could send the refresh token elsewhere.
    token_uri = info.get("token_uri") if allow_token_uri and info.get("token_uri") else GOOGLE_TOKEN_URI
    scopes = info.get("scopes")
    return SavingCredentials(
        token=info.get("token"), refresh_token=info["refresh_token"], token_uri=token_uri,
        client_id=info["client_id"], client_secret=info["client_secret"],
        scopes=scopes.split() if isinstance(scopes, str) else scopes, expiry=parsed, save_to=save_to)


class SavingCredentials(Credentials):
    """OAuth credentials that rewrite their token file (if any) after each refresh."""

    def __init__(self, *args, save_to: Path | None, **kwargs):
        super().__init__(*args, **kwargs)
        self._save_to = save_to

    def refresh(self, request):
        super().refresh(request)
        if self._save_to is not None:
            write_token_file(self._save_to, self)


def write_token_file(path: Path, credentials) -> None:
    """Writes the credentials' authorized-user JSON to `path`, readable by its owner only (0600).

    Written to a temporary file created 0600 and renamed into place, so the token is never
    readable by others, not even for a moment, and a crash leaves the old file whole.
    """
    path = Path(path)
    body = credentials.to_json()
    with _FILE_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp creates the file 0600, so the token is never readable by others.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(body)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


# -- signing in ----------------------------------------------------------------------------------


class _PromptBrowser(webbrowser.BaseBrowser):
    """Hands the sign-in URL to the caller (the CLI shows it) and opens a real browser if asked."""

    def __init__(self, prompt: Callable[[str], None], open_browser: bool):
        super().__init__("shardrun-prompt")
        self.prompt = prompt
        self.open_browser = open_browser

    def open(self, url, new=0, autoraise=True):
        self.prompt(url)
        if self.open_browser:
            try:
                webbrowser.open(url, new=new, autoraise=autoraise)
            except webbrowser.Error:
                pass  # no browser here: the user opens the URL they were shown
        return True


def login(account: DriveAccount, prompt: Callable[[str], None], *, open_browser: bool = True,
          port: int = 0, timeout_s: float | None = 300) -> Path:
    """Runs the OAuth installed-app flow for the account; returns the token file written (0600).

    `prompt(url)` receives the sign-in URL (the user opens it and signs in as this account);
    a local redirect server on `port` (0: any free one) receives the answer.
    """
    from google_auth_oauthlib.flow import InstalledAppFlow

    if account.client_secrets is None:
        raise AuthError(f"{account.label}: signing in needs your OAuth client id: set client_secrets = "
                        "\"path/to/client_secret.json\" (a Desktop-app client from the Google Cloud console)")
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(account.client_secrets), scopes=[DRIVE_SCOPE])
    except FileNotFoundError:
        raise AuthError(f"{account.label}: no OAuth client file at {account.client_secrets}") from None
    except (ValueError, KeyError):
        raise AuthError(f"{account.label}: {account.client_secrets} is not an OAuth client file "
                        "(download the Desktop-app client JSON from the Google Cloud console)") from None
    name = f"shardrun-prompt-{id(flow)}"
    webbrowser.register(name, None, _PromptBrowser(prompt, open_browser))
    try:
        credentials = flow.run_local_server(port=port, open_browser=True, browser=name,
                                            authorization_prompt_message="", timeout_seconds=timeout_s)
    except Exception as e:  # the flow raises oauthlib's and wsgiref's own errors
        raise AuthError(f"{account.label}: signing in failed ({type(e).__name__}); run "
                        "`shardrun accounts login` again") from None
    path = token_path(account)
    write_token_file(path, credentials)
    return path
