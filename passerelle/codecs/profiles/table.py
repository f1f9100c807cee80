"""A small text format for field tables, so a profile reads like the specification it copies.

One field per line: `number kind length name [| option ...]`, where `length` is `12` (fixed),
`..19` (LLVAR) or `...999` (LLLVAR), and options are `sub=<codec>`, `mask=<policy>`,
`data=<encoding>`. A profile supplies the encodings each kind gets by default.
"""

from __future__ import annotations

from collections.abc import Callable

from passerelle.codecs.fields import Data, FieldSpec, Kind, Prefix
from passerelle.codecs.masking import Mask

Defaults = Callable[[Kind, int], dict[str, object]]


def parse_table(text: str, defaults: Defaults) -> list[FieldSpec]:
    specs = []
    for line in text.strip().splitlines():
        head, _, options = line.partition("|")
        number, kind_text, length, name = head.split(None, 3)
        kind = Kind(kind_text)
        var = len(length) - len(length.lstrip("."))
        args: dict[str, object] = dict(defaults(kind, var))
        for option in options.split():
            key, _, value = option.partition("=")
            if key == "sub":
                args["sub"] = value
            elif key == "mask":
                args["mask"] = Mask(value)
            elif key == "data":
                args["data"] = Data(value)
            elif key == "prefix":
                args["prefix"] = Prefix(value)
            else:
                raise ValueError(f"field {number}: unknown option {key}")
        specs.append(
            FieldSpec(int(number), name.strip(), kind, int(length.lstrip(".")), var, **args)  # type: ignore[arg-type]
        )
    return specs
