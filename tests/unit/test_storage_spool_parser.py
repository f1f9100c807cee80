"""The spool record format: whatever the bytes, parsing never fails and loses only damage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.storage.spool import (
    HEADER_SIZE,
    SpoolError,
    encode_record,
    parse_records,
)

payloads = st.lists(st.binary(max_size=300), max_size=12)
MAX = 4096


def _journal(items: list[bytes]) -> tuple[bytes, list[int]]:
    buf, ends = b"", []
    for index, payload in enumerate(items):
        buf += encode_record(1 + index % 3, payload, max_record=MAX)
        ends.append(len(buf))
    return buf, ends


@settings(deadline=None)  # a loaded CI machine must not fail a fast parser
@given(payloads)
def test_records_round_trip(items: list[bytes]) -> None:
    buf, _ = _journal(items)
    parsed = parse_records(buf, max_record=MAX)
    assert [r.payload for r in parsed.records] == items
    assert [r.kind for r in parsed.records] == [1 + i % 3 for i in range(len(items))]
    assert parsed.valid_end == len(buf) and parsed.skipped == []


@settings(deadline=None)  # a loaded CI machine must not fail a fast parser
@given(payloads, st.data())
def test_a_torn_tail_is_ignored(items: list[bytes], data: st.DataObject) -> None:
    buf, ends = _journal(items)
    cut = data.draw(st.integers(0, len(buf)))
    parsed = parse_records(buf[:cut], max_record=MAX)
    complete = sum(1 for end in ends if end <= cut)
    assert [r.payload for r in parsed.records] == items[:complete]
    assert parsed.valid_end == (ends[complete - 1] if complete else 0)


@settings(deadline=None)  # a loaded CI machine must not fail a fast parser
@given(payloads, st.binary(min_size=1, max_size=64))
def test_garbage_after_the_last_record_is_ignored(items: list[bytes], junk: bytes) -> None:
    buf, _ = _journal(items)
    parsed = parse_records(buf + junk, max_record=MAX)
    assert [r.payload for r in parsed.records][: len(items)] == items
    assert parsed.records[len(items) :] == [] or junk.startswith(b"PSJ1")


@settings(deadline=None)  # a loaded CI machine must not fail a fast parser
@given(st.lists(st.binary(min_size=1, max_size=100), min_size=2, max_size=8), st.data())
def test_damage_in_the_middle_loses_only_the_damaged_record(
    items: list[bytes], data: st.DataObject
) -> None:
    buf, ends = _journal(items)
    victim = data.draw(st.integers(0, len(items) - 2))
    start = ends[victim - 1] if victim else 0
    where = data.draw(st.integers(start, ends[victim] - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(buf)
    damaged[where] ^= flip

    parsed = parse_records(bytes(damaged), max_record=MAX)

    survivors = [r.payload for r in parsed.records if r.offset >= ends[victim] or r.offset < start]
    assert survivors == items[:victim] + items[victim + 1 :]


@settings(deadline=None)  # a loaded CI machine must not fail a fast parser
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(buf: bytes) -> None:
    parsed = parse_records(buf, max_record=MAX)
    assert 0 <= parsed.valid_end <= len(buf)
    for record in parsed.records:
        assert buf[record.offset + HEADER_SIZE : record.offset + HEADER_SIZE + len(
            record.payload)] == record.payload


def test_a_declared_length_beyond_the_limit_is_damage_not_an_allocation() -> None:
    header = b"PSJ1" + bytes([1, 0]) + (2**32 - 1).to_bytes(4, "big") + bytes(4)
    good = encode_record(1, b"after", max_record=MAX)
    parsed = parse_records(header + good, max_record=MAX)
    assert [r.payload for r in parsed.records] == [b"after"]
    assert parsed.skipped == [(0, len(header))]


def test_oversized_records_and_bad_kinds_are_refused() -> None:
    with pytest.raises(SpoolError, match="exceeds the 4096-byte limit"):
        encode_record(1, bytes(MAX + 1), max_record=MAX)
    with pytest.raises(SpoolError, match=r"kind must be 1\.\.255"):
        encode_record(0, b"x", max_record=MAX)
