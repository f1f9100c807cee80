"""Portal settings: the `[portal]` table, plus `[storage]`, `[mail]` and `[branding]`.

One TOML file configures a deployment. `[mail]` and `[branding]` are read by
`passerelle.mail` (the same tables mpctl uses, so the portal's mails and the operator's look
alike); `[portal]` adds what only the web pages need: where to listen, the cookie secret,
the session and lock-out policy, and the white-label look (colours, logo) that the mail
branding does not carry.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from passerelle.mail import Branding, MailError, MailSettings, load_settings
from passerelle.storage.db import StorageError, StorageSettings, settings_from_table
from passerelle.storage.pan import PanHmacKey

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_LOGO_TYPES = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg"}


class PortalError(Exception):
    """A portal configuration that cannot be used; the message names the key."""


class PortalSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[portal]` table."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    base_url: str = "http://localhost:8080"  # what password links in mails point to
    # Signs the session cookie. Set it (or secret_key_file) so sessions survive a restart
    # and are shared by several workers; a random one is made otherwise.
    secret_key: str | None = None
    secret_key_file: str | None = None
    cookie_secure: bool = True  # false only for plain-http tests and local trials
    same_site: str = "lax"
    session_idle_minutes: Annotated[int, msgspec.Meta(ge=1, le=24 * 60)] = 30
    session_hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 7)] = 12
    lockout_failures: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    lockout_minutes: Annotated[int, msgspec.Meta(ge=1, le=24 * 60)] = 15
    min_password_length: Annotated[int, msgspec.Meta(ge=8, le=128)] = 12
    # A DSN for payment reads, ideally a role with SELECT only; `[storage] dsn` otherwise.
    read_dsn: str | None = None
    # PAN HMAC keys ("VERSION:HEX"), every version still in retention, for card searches.
    pan_keys: list[str] = msgspec.field(default_factory=list)
    # White-label look.
    primary_color: str = "#003a70"
    accent_color: str = "#e8eef5"
    logo: str | None = None  # path to an SVG, PNG or JPEG file

    def __post_init__(self) -> None:
        for key in ("primary_color", "accent_color"):
            if not _COLOUR.match(getattr(self, key)):
                raise PortalError(f"portal.{key}: {getattr(self, key)!r} is not #RRGGBB")
        if self.same_site not in ("lax", "strict"):
            raise PortalError(f"portal.same_site: {self.same_site!r} is not lax or strict")
        if self.logo and Path(self.logo).suffix.lower() not in _LOGO_TYPES:
            raise PortalError(f"portal.logo: {self.logo} is not an .svg, .png or .jpg file")


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the portal reads at start."""

    portal: PortalSettings
    storage: StorageSettings
    mail: MailSettings
    branding: Branding
    secret: bytes
    pan_keys: tuple[PanHmacKey, ...]
    logo: tuple[bytes, str] | None  # (content, media type)

    @property
    def dsn(self) -> str:
        if not self.storage.dsn:
            raise PortalError("storage.dsn: the portal needs a PostgreSQL DSN")
        return self.storage.dsn

    @property
    def read_dsn(self) -> str:
        return self.portal.read_dsn or self.dsn


def _pan_keys(values: list[str]) -> tuple[PanHmacKey, ...]:
    keys = []
    for value in values:
        version, _, key_hex = value.partition(":")
        if not version.isdigit() or not key_hex:
            raise PortalError("portal.pan_keys: expected \"VERSION:HEX\" strings")
        try:
            keys.append(PanHmacKey.from_hex(int(version), key_hex))
        except StorageError as exc:
            raise PortalError(f"portal.pan_keys: {exc}") from None
    return tuple(keys)


def build_config(raw: dict[str, object], *, mail: MailSettings | None = None,
                 branding: Branding | None = None) -> Config:
    """Validate raw tables (as TOML gives them); errors name the bad key."""
    try:
        portal = msgspec.convert(raw.get("portal", {}), PortalSettings)
    except msgspec.ValidationError as exc:
        raise PortalError(f"[portal] {str(exc).replace('$.', 'portal.')}") from None
    try:
        storage = settings_from_table(raw.get("storage", {}))  # type: ignore[arg-type]
        mail = mail or msgspec.convert(raw.get("mail", {}), MailSettings)
        branding = branding or msgspec.convert(raw.get("branding", {}), Branding)
    except (StorageError, msgspec.ValidationError) as exc:
        raise PortalError(str(exc)) from None
    secret = (portal.secret_key or "").encode()
    if portal.secret_key_file:
        try:
            secret = Path(portal.secret_key_file).read_bytes().strip()
        except OSError as exc:
            raise PortalError(f"portal.secret_key_file: cannot read ({exc.strerror})") from None
    if secret and len(secret) < 32:
        raise PortalError("portal.secret_key: at least 32 characters")
    logo = None
    if portal.logo:
        try:
            logo = (Path(portal.logo).read_bytes(),
                    _LOGO_TYPES[Path(portal.logo).suffix.lower()])
        except OSError as exc:
            raise PortalError(f"portal.logo: cannot read {portal.logo} ({exc.strerror})") from None
    keys = list(portal.pan_keys) or os.environ.get("PASSERELLE_PAN_KEYS", "").split()
    return Config(portal=portal, storage=storage, mail=mail, branding=branding,
                  secret=secret or secrets.token_bytes(32), pan_keys=_pan_keys(keys),
                  logo=logo)


def load_config(path: str | Path) -> Config:
    """The portal's configuration from the TOML file at `path`."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        mail, branding = load_settings(path)
    except OSError as exc:
        raise PortalError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PortalError(f"{path}: not valid TOML ({exc})") from None
    except MailError as exc:
        raise PortalError(str(exc)) from None
    return build_config(raw, mail=mail, branding=branding)
