"""Our profiles as pyiso8583 specifications.

pyiso8583 is the project's test oracle and benchmark baseline; describing the same layout
to it from our own tables keeps the two from drifting. Sub-element codecs have no pyiso8583
equivalent: such fields are handed over as their raw bytes (hex strings on its side).
"""

from __future__ import annotations

from typing import Any

from passerelle.codecs.fields import Data, FieldSpec, Prefix
from passerelle.codecs.profile import Profile

_PREFIX_ENC = {Prefix.BINARY: "b", Prefix.BCD: "bcd", Prefix.ASCII: "ascii", Prefix.EBCDIC: "cp500"}


def _field(spec: FieldSpec) -> dict[str, Any]:
    data = "b" if spec.data in (Data.BCD, Data.BINARY) else spec.data.value
    if spec.data is Data.HEX:
        data = "ascii"
    out: dict[str, Any] = {
        "data_enc": data,
        "len_enc": _PREFIX_ENC[spec.prefix],
        "len_type": spec.prefix_size if spec.var else 0,
        "max_len": spec.max_len,
        "desc": spec.name,
    }
    if spec.data is Data.BCD and spec.half:
        out.update(len_count="nibbles", left_pad="0")
    return out


def pyiso_spec(profile: Profile) -> dict[str, dict[str, Any]]:
    """A pyiso8583 spec dict equivalent to `profile` (without sub-element parsing)."""
    spec: dict[str, dict[str, Any]] = {
        "h": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0, "desc": ""},
        "t": {"data_enc": "b" if profile.mti_bcd else profile.mti_encoding, "len_enc": "ascii",
              "len_type": 0, "max_len": 2 if profile.mti_bcd else 4, "desc": "MTI"},
    }
    bitmap = {"data_enc": "ascii" if profile.bitmap_hex else "b", "len_enc": "ascii",
              "len_type": 0, "max_len": 16 if profile.bitmap_hex else 8, "desc": "Bitmap"}
    spec["p"] = dict(bitmap)
    spec["1"] = dict(bitmap)
    for number, field_spec in enumerate(profile.specs):
        if field_spec is not None:
            spec[str(number)] = _field(field_spec)
    return spec
