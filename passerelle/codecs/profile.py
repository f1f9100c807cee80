"""A profile: one wire layout of ISO 8583, as data (MTI and bitmap encoding + field table)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from passerelle.codecs.fields import Data, FieldSpec, Kind, Prefix


@dataclass(frozen=True)
class Profile:
    name: str
    mti_bcd: bool  # MTI as 2 packed-BCD bytes, else 4 text characters
    bitmap_hex: bool  # bitmaps as 16 hex characters each, else 8 binary bytes
    specs: tuple[FieldSpec | None, ...]  # index = field number, 0 and 1 unused
    mti_encoding: str = "ascii"
    description: str = ""

    @classmethod
    def build(
        cls, name: str, fields: Iterable[FieldSpec], *, mti_bcd: bool, bitmap_hex: bool,
        description: str = "",
    ) -> Profile:
        table: list[FieldSpec | None] = [None] * 129
        for spec in fields:
            if not 2 <= spec.number <= 128 or table[spec.number] is not None:
                raise ValueError(f"profile {name}: bad or repeated field {spec.number}")
            table[spec.number] = spec
        return cls(name, mti_bcd, bitmap_hex, tuple(table), description=description)

    def with_text_encoding(self, encoding: str, name: str) -> Profile:
        """The same layout with text (an, ans and text prefixes) in another encoding.

        CB2A sessions may announce EBCDIC (cp500) for alphanumerics; numerics stay BCD.
        """
        data = Data(encoding)
        prefix = Prefix(encoding)
        specs = tuple(
            None
            if spec is None
            else dataclasses.replace(
                spec,
                data=data if spec.data in (Data.ASCII, Data.EBCDIC) and spec.kind is not Kind.N
                else spec.data,
                prefix=prefix if spec.prefix in (Prefix.ASCII, Prefix.EBCDIC) else spec.prefix,
            )
            for spec in self.specs
        )
        return dataclasses.replace(self, name=name, specs=specs)
