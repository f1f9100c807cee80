"""switchd's JSON log lines: whatever an event carries, no card number leaves in clear."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from passerelle.switchd import logs
from tests.strategies import pans

# No digit (it would lengthen the run) and no track separator (the PAN would read as track 2).
texts = st.text(st.characters(blacklist_categories=["Nd", "Cs"], blacklist_characters="=Dd"),
                max_size=20)


class _Opaque:
    """An object msgspec cannot encode: the renderer falls back to its str."""

    def __init__(self, pan: str) -> None:
        self.pan = pan

    def __str__(self) -> str:
        return f"card {self.pan}"


def _line(**event: object) -> str:
    stream = io.BytesIO()
    logs.configure("info", stream)
    logs.get_logger().info("test.event", **event)
    return stream.getvalue().decode()


@given(pans(), texts, texts)
def test_a_pan_in_any_shape_leaves_masked(pan: str, before: str, after: str) -> None:
    line = _line(
        text=f"{before}{pan}{after}", raw=bytes.fromhex(pan + "0" * (len(pan) % 2)),
        number=int(pan), nested={"list": [pan, (pan,)]}, opaque=_Opaque(pan),
        track=f"{pan}=2812101123400001",
    )
    assert pan not in line
    event = json.loads(line)
    assert event["text"] == f"{before}{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}{after}"
    assert event["track"] == f"{pan[:6]}******{pan[-4:]}=****"
    assert event["number"] == f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"
    assert event["opaque"].startswith("card " + pan[:6])


@given(st.text(max_size=40).filter(lambda t: not any(c.isdigit() for c in t)),
       st.integers(min_value=-(10**11), max_value=10**12 - 1),
       st.floats(allow_nan=False, allow_infinity=False))
def test_values_without_card_numbers_are_unchanged(text: str, number: int, ratio: float) -> None:
    event = json.loads(_line(text=text, number=number, ratio=ratio, flag=True, nothing=None,
                             stan="000123", terminal="12345678"))
    assert (event["text"], event["number"], event["ratio"]) == (text, number, ratio)
    assert (event["flag"], event["nothing"], event["stan"]) == (True, None, "000123")


def test_a_lone_surrogate_is_spelled_out_not_fatal() -> None:
    event = json.loads(_line(peer_name="caf\udce9", nested={"list": ["\ud800"]}))
    assert event["peer_name"] == "caf\\udce9" and event["nested"]["list"] == ["\\ud800"]
