"""HSM settings (the `[hsm]` table of switchd.toml), as msgspec Structs.

No key material and no PIN ever appears here: the soft backend reads a KEK *file*, the
PKCS#11 user PIN comes from an environment variable or a file, and payShield keys are
LMK-encrypted tokens, which are useless without the HSM.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class SoftSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    keystore: str = "/var/lib/passerelle/keystore.json"
    kek: str = "/etc/passerelle/kek"


class Pkcs11Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    library: str = "/usr/lib/softhsm/libsofthsm2.so"
    token: str = "passerelle"
    pin_env: str = "PASSERELLE_PKCS11_PIN"
    pin_file: str | None = None
    # Worker threads (one session each) driving the token off the event loop. Keep 1 unless
    # the library locks by itself: python-pkcs11 does not ask it to (see pkcs11_token.py).
    threads: int = 1
    timeout: float = 5.0  # seconds for one token call


class PayShieldSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 1500
    header_length: int = 4  # digits of the message header, used to match pipelined answers
    timeout: float = 2.0  # seconds for one command, connection included
    connections: int = 2
    max_in_flight: int = 64  # per connection
    keys: dict[str, str] = msgspec.field(default_factory=dict)  # name -> key under LMK
    zone_pin_keys: list[str] = msgspec.field(default_factory=list)  # ZPK sources: CC, not CA


class HSMSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: Literal["soft", "pkcs11", "payshield"] = "soft"
    # Where PAN HMAC and data (AES-GCM) keys live when `backend` lacks them (payShield):
    data_backend: Literal["soft", "pkcs11"] | None = None
    pan_hmac_key: str = "pan-hmac"
    soft: SoftSettings = msgspec.field(default_factory=SoftSettings)
    pkcs11: Pkcs11Settings = msgspec.field(default_factory=Pkcs11Settings)
    payshield: PayShieldSettings = msgspec.field(default_factory=PayShieldSettings)
