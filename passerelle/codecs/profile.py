"""A profile: one wire layout of ISO 8583, as data (MTI and bitmap encoding + field table).

At construction it derives, per field, a converter and an encoder specialised on the
field's format, and it keeps a bounded cache of compiled `Layout`s keyed by bitmap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from passerelle.codecs.fields import Data, FieldSpec, Kind, Prefix
from passerelle.codecs.layout import Converter, Encoder, Layout, make_converter, make_encoder

MAX_CACHED_LAYOUTS = 1024  # distinct bitmaps remembered; hostile input cannot grow memory


@dataclass(frozen=True)
class Profile:
    name: str
    mti_bcd: bool  # MTI as 2 packed-BCD bytes, else 4 text characters
    bitmap_hex: bool  # bitmaps as 16 hex characters each, else 8 binary bytes
    specs: tuple[FieldSpec | None, ...]  # index = field number, 0 and 1 unused
    mti_encoding: str = "ascii"
    description: str = ""
    converters: tuple[Converter | None, ...] = field(init=False, repr=False, compare=False)
    plain_converters: tuple[Converter | None, ...] = field(init=False, repr=False, compare=False)
    encoders: tuple[Encoder | None, ...] = field(init=False, repr=False, compare=False)
    layouts: dict[bytes, Layout] = field(init=False, repr=False, compare=False)
    # MTI + bitmap(s) as received -> (MTI, layout); MTI -> its wire bytes. Both bounded.
    heads: dict[bytes, tuple[str, Layout]] = field(init=False, repr=False, compare=False)
    mti_wire: dict[str, bytes] = field(init=False, repr=False, compare=False)
    # Sizes on the wire, read by every parse: plain attributes, not properties.
    mti_size: int = field(init=False, repr=False, compare=False)  # 2 (BCD) or 4 (text)
    bitmap_size: int = field(init=False, repr=False, compare=False)  # one bitmap: 8 or 16

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "converters", tuple(s and make_converter(s) for s in self.specs))
        plain = tuple(s and make_converter(s, subelements=False) for s in self.specs)
        set_(self, "plain_converters", plain)
        set_(self, "encoders", tuple(s and make_encoder(s) for s in self.specs))
        set_(self, "layouts", {})
        set_(self, "heads", {})
        set_(self, "mti_wire", {})
        set_(self, "mti_size", 2 if self.mti_bcd else 4)
        set_(self, "bitmap_size", 16 if self.bitmap_hex else 8)

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


    def layout(self, numbers: Iterable[int], header: int) -> Layout:
        return Layout(self.specs, numbers, header, self.converters, self.plain_converters)

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
        return Profile(self.name if name is None else name, self.mti_bcd, self.bitmap_hex, specs,
                       self.mti_encoding, self.description)
