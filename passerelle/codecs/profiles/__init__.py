"""The wire layouts we speak, by name: `get_profile("cb2a")`."""

from __future__ import annotations

from passerelle.codecs.errors import CodecError
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles.cb2a import CB2A, CB2A_EBCDIC
from passerelle.codecs.profiles.iso87_ascii import ISO87_ASCII
from passerelle.codecs.profiles.iso93_binary import ISO93_BINARY

PROFILES: dict[str, Profile] = {p.name: p for p in (CB2A, CB2A_EBCDIC, ISO87_ASCII, ISO93_BINARY)}


def get_profile(name: str) -> Profile:
    """The profile called `name`; a `CodecError` lists the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise CodecError(None, 0, f"unknown profile {name!r} (known: {known})") from None


__all__ = ["CB2A", "ISO87_ASCII", "ISO93_BINARY", "PROFILES", "Profile", "get_profile"]
