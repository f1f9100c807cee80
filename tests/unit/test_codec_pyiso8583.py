"""Differential tests against pyiso8583, the project's oracle.

iso87-ascii is pyiso8583's own `default_ascii` layout; every profile is also described to it
through `pyiso_spec` (no sub-element parsing there: such fields travel as their raw bytes).
Same bytes -> same field values; same values -> same bytes.

Value mapping (ours -> pyiso8583's): text as is; bytes as upper-case hex; packed-BCD track
data with its separator as nibble D; sub-element tuples as the hex of the field's raw body.
"""

from __future__ import annotations

from typing import Any

import iso8583
import pytest
from hypothesis import given
from hypothesis import strategies as st
from iso8583.specs import default_ascii

from passerelle.codecs.fields import Data
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import PROFILES, get_profile
from passerelle.codecs.pyiso_spec import pyiso_spec
from passerelle.codecs.subfields import SUBFIELD_CODECS
from tests.cb2a_vectors import NAMES, load
from tests.strategies import MEDIUM, ROUND_TRIP, defined_numbers, messages

ISO87 = get_profile("iso87-ascii")
PROFILE_NAMES = sorted(PROFILES)


def _comparable(profile: Profile) -> st.SearchStrategy[int]:
    """Field numbers both sides treat as data. pyiso8583 takes field 65 for a third bitmap
    (it drops it on encode unless fields 129-192 exist), so 65 stays out of the comparison.
    """
    return st.sampled_from([n for n in defined_numbers(profile) if n != 65])


def to_pyiso(profile: Profile, mti: str, values: dict[int, Any]) -> dict[str, str]:
    """Our decoded values as pyiso8583 spells them (no bitmap keys)."""
    doc = {"t": mti}
    for number, given_value in values.items():
        spec = profile.specs[number]
        assert spec is not None
        value = given_value
        if spec.sub is not None:
            value = SUBFIELD_CODECS[spec.sub].encode(given_value)
        if isinstance(value, bytes):
            doc[str(number)] = value.hex().upper()
        elif spec.data is Data.BCD:
            doc[str(number)] = value.replace("=", "D")
        else:
            doc[str(number)] = value
    return doc


def _fields(doc: dict[str, Any]) -> dict[str, Any]:
    """pyiso8583's decoded dict without its bitmap keys ('p' primary, '1' secondary)."""
    return {k: v for k, v in doc.items() if k not in ("p", "1", "h")}


# -- the profile is pyiso8583's default_ascii ---------------------------------------------------
def test_iso87_ascii_matches_default_ascii_field_by_field() -> None:
    ours = pyiso_spec(ISO87)
    for key in ("t", "p", "1"):
        for attr in ("data_enc", "len_type", "max_len"):
            assert ours[key][attr] == default_ascii[key][attr], (key, attr)
    assert ISO87.mti_bcd is False and ISO87.bitmap_hex is True
    for number in range(2, 129):
        theirs = default_ascii[str(number)]
        spec = ISO87.specs[number]
        assert spec is not None, number
        assert spec.var == theirs["len_type"], number
        assert spec.max_len == theirs["max_len"], number
        assert theirs["data_enc"] == "ascii" and theirs["len_enc"] == "ascii"
        # Ours writes text as ASCII, and binary fields as hex characters (ASCII on the wire).
        assert spec.data in (Data.ASCII, Data.HEX), number
        assert not spec.var or spec.prefix.value == "ascii", number
        for attr in ("data_enc", "len_enc", "len_type", "max_len"):
            assert ours[str(number)][attr] == theirs[attr], (number, attr)


# -- same values -> same bytes, same bytes -> same values -------------------------------------
@pytest.mark.parametrize("name", PROFILE_NAMES)
@ROUND_TRIP
@given(data=st.data())
def test_same_values_same_bytes(name: str, data: st.DataObject) -> None:
    profile = get_profile(name)
    spec = default_ascii if name == "iso87-ascii" else pyiso_spec(profile)
    mti, values = data.draw(messages(profile, numbers=_comparable(profile)))
    ours = encode(profile, mti, values)
    theirs, _ = iso8583.encode(to_pyiso(profile, mti, values), spec)
    assert ours == bytes(theirs)


@pytest.mark.parametrize("name", PROFILE_NAMES)
@ROUND_TRIP
@given(data=st.data())
def test_same_bytes_same_values(name: str, data: st.DataObject) -> None:
    profile = get_profile(name)
    spec = default_ascii if name == "iso87-ascii" else pyiso_spec(profile)
    mti, values = data.draw(messages(profile, numbers=_comparable(profile)))
    wire = encode(profile, mti, values)
    theirs, _ = iso8583.decode(wire, spec)
    msg = Message.parse(wire, profile)
    assert _fields(theirs) == to_pyiso(profile, msg.mti, msg.to_dict())
    assert list(msg.numbers) == [int(k) for k in _fields(theirs) if k != "t"]


@MEDIUM
@given(data=st.data())
def test_iso87_pyiso_built_messages_decode_alike(data: st.DataObject) -> None:
    """Messages built by pyiso8583 from text values (digits, printable ASCII, hex)."""
    doc: dict[str, str] = {"t": data.draw(st.from_regex(r"\A[0-9]{4}\Z"))}
    for number in data.draw(st.lists(_comparable(ISO87), max_size=10, unique=True)):
        spec = ISO87.specs[number]
        assert spec is not None
        size = spec.max_len if not spec.var else data.draw(st.integers(0, spec.max_len))
        if spec.data is Data.HEX:
            alphabet = "0123456789ABCDEF"
            size -= size & 1
        elif spec.kind.value == "n":
            alphabet = "0123456789"
        elif spec.kind.value == "z":
            alphabet = "0123456789="
        else:
            alphabet = "".join(map(chr, range(0x20, 0x7F)))
        doc[str(number)] = data.draw(st.text(st.sampled_from(alphabet), min_size=size,
                                             max_size=size))
    wire, _ = iso8583.encode(dict(doc), default_ascii)
    msg = Message.parse(bytes(wire), ISO87)
    assert to_pyiso(ISO87, msg.mti, msg.to_dict()) == doc
    assert encode(ISO87, msg.mti, msg.to_dict()) == bytes(wire)


# -- the reference vectors through pyiso_spec ---------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_cb2a_vectors_decode_alike(name: str) -> None:
    profile = get_profile("cb2a")
    data = load(name)
    theirs, _ = iso8583.decode(data, pyiso_spec(profile))
    msg = Message.parse(data, profile)
    assert _fields(theirs) == to_pyiso(profile, msg.mti, msg.to_dict())
    rebuilt, _ = iso8583.encode(to_pyiso(profile, msg.mti, msg.to_dict()), pyiso_spec(profile))
    assert bytes(rebuilt) == data
