"""Card masking and HMAC, remise totals and status: pure functions, no database."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.storage.db import StorageError, StorageSettings, settings_from_table
from passerelle.storage.pan import PanHmacKey, luhn_valid, mask_pan, pan_hmac, protect_pan
from passerelle.storage.remises import (
    STATUS_CORRECT,
    InvalidRemise,
    Remise,
    RemiseTotals,
    RemiseTransaction,
    _check_transaction,
    compute_totals,
    remise_status,
    validate,
)

KEY = PanHmacKey(1, bytes(range(32)))


def test_mask_keeps_first_six_and_last_four() -> None:
    assert mask_pan("4970101234561234") == "497010******1234"
    assert mask_pan("374245455400126") == "374245*****0126"
    assert mask_pan("6011000990139424111") == "601100*********4111"


@pytest.mark.parametrize(
    ("pan", "message"),
    [("49701012345", "12 to 19 digits, got 11"), ("4970 1012 3456 1234", "string of digits"),
     ("49701012345612341234", "got 20"), ("٤٩٧٠١٠١٢٣٤٥٦١٢٣٤", "string of digits")],
)
def test_bad_pans_are_refused_with_the_reason(pan: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        mask_pan(pan)


def test_hmac_is_keyed_sha256_and_carries_the_key_version() -> None:
    digest, version = pan_hmac(PanHmacKey(7, b"k" * 32), "4970101234561234")
    assert version == 7
    assert digest == hmac.new(b"k" * 32, b"4970101234561234", hashlib.sha256).digest()
    other, _ = pan_hmac(PanHmacKey(8, b"j" * 32), "4970101234561234")
    assert other != digest


@pytest.mark.parametrize("pan", ["4970101234561234", "374245455400126", "601100099013942"])
def test_protect_pan_is_mask_and_hmac_in_one(pan: str) -> None:
    assert protect_pan(KEY, pan) == (mask_pan(pan), *pan_hmac(KEY, pan))


@pytest.mark.parametrize("key", [b"k" * 16, bytes(range(64)), bytes(range(65)), b"x" * 200])
def test_hmac_matches_the_standard_library_for_short_and_long_keys(key: bytes) -> None:
    for pan in ("4970101234561234", "374245455400126"):
        expected = hmac.new(key, pan.encode(), hashlib.sha256).digest()
        assert pan_hmac(PanHmacKey(2, key), pan) == (expected, 2)
        assert protect_pan(PanHmacKey(2, key), pan)[1] == expected


def test_protect_pan_refuses_what_mask_refuses() -> None:
    with pytest.raises(StorageError, match="string of digits"):
        protect_pan(KEY, "4970 1012 3456 1234")


def test_keys_are_checked_and_never_printed() -> None:
    with pytest.raises(StorageError, match="at least 16 are needed"):
        PanHmacKey(1, b"short")
    with pytest.raises(StorageError, match=r"version must be 1\.\.32767"):
        PanHmacKey(0, b"k" * 32)
    with pytest.raises(StorageError, match="not hexadecimal"):
        PanHmacKey.from_hex(2, "zz")
    assert "6b6b" not in repr(PanHmacKey.from_hex(2, "6b" * 32))


@settings(deadline=None)  # a loaded CI machine must not fail a fast parser
@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_exactly_one_check_digit_completes_a_pan(body: str) -> None:
    assert sum(luhn_valid(body + d) for d in "0123456789") == 1


def _tx(seq: int, operation: str, result: str, amount: int) -> RemiseTransaction:
    return RemiseTransaction(
        seq=seq, at=datetime(2026, 11, 1, tzinfo=UTC), operation=operation, result=result,
        amount=amount, currency=978, pan_masked="497010******1234", pan_hmac=bytes(32),
        pan_hmac_key_version=1,
    )


def test_totals_count_each_kind_and_declined_only_as_unauthorized() -> None:
    txs = [_tx(1, "purchase", "approved", 1000), _tx(2, "purchase", "approved", 250),
           _tx(3, "refund", "approved", 300), _tx(4, "cancellation", "approved", 1000),
           _tx(5, "purchase", "declined", 9900), _tx(6, "refund", "declined", 100)]
    assert compute_totals(txs) == RemiseTotals(
        purchases_count=2, purchases_amount=1250, refunds_count=1, refunds_amount=300,
        cancellations_count=1, cancellations_amount=1000, unauthorized_count=2,
        unauthorized_amount=10000,
    )
    assert compute_totals([]) == RemiseTotals()


def test_status_names_every_difference() -> None:
    computed = RemiseTotals(purchases_count=2, purchases_amount=1250, refunds_count=1,
                            refunds_amount=300)
    declared = RemiseTotals(purchases_count=2, purchases_amount=1350, refunds_count=0,
                            refunds_amount=300)
    assert remise_status(computed, computed, 978) == STATUS_CORRECT
    assert remise_status(declared, computed, 978) == (
        "ECART ACHATS MONTANT DECLARE 13,50 CALCULE 12,50; "
        "REMBOURSEMENTS NB DECLARE 0 CALCULE 1"
    )
    yen = RemiseTotals(purchases_count=2, purchases_amount=1300)
    assert remise_status(yen, computed, 392) == "ECART ACHATS MONTANT DECLARE 1300 CALCULE 1250; " \
        "REMBOURSEMENTS NB DECLARE 0 CALCULE 1 MONTANT DECLARE 0 CALCULE 300"


def test_storage_settings_name_the_bad_key() -> None:
    assert settings_from_table({"dsn": "host=db"}) == StorageSettings(dsn="host=db")
    with pytest.raises(StorageError, match=r"pool_max_sise"):
        settings_from_table({"pool_max_sise": 3})
    with pytest.raises(StorageError, match=r"\$\.pool_max_size"):
        settings_from_table({"pool_max_size": "ten"})
    with pytest.raises(StorageError, match=r"pool_min_size .* exceeds"):
        settings_from_table({"pool_min_size": 5, "pool_max_size": 2})


# Values each transaction field may take below: good ones and bad ones.
_FIELD_VALUES: dict[str, list[object]] = {
    "seq": [1, 0, -1, 2**31, True],
    "at": [datetime(2026, 11, 1, tzinfo=UTC),
           datetime(2026, 11, 1, tzinfo=timezone(timedelta(hours=1))), datetime(2026, 11, 1)],
    "amount": [0, 1250, -1, 2**62, 2**62 + 1, False],
    "currency": [978, 840],
    "pan_masked": ["497010******1234", "4970101234561234", "497010*1234",
                   "٤٩٧٠١٠******1234"],
    "pan_hmac": [bytes(32), bytes(31)],
    "pan_hmac_key_version": [1, 0, 32768],
    "expiry": [None, "2710", "2713", "", "2710\n", "٢٧١٠"],
    "response_code": [None, "00", "A1", "a1", "0", "0é"],
    **{name: [None, "BNP PARIBAS", "", "x" * 64, "x" * 65, "TAB\tHERE", "SOCIÉTÉ"]
       for name in ("authorization_number", "issuer", "product", "rrn", "stan", "aid")},
}
_GOOD_FIELDS = {"at": datetime(2026, 11, 1, tzinfo=UTC), "amount": 1250, "currency": 978,
                "pan_masked": "497010******1234", "pan_hmac": bytes(32),
                "pan_hmac_key_version": 1}


def _validate_agrees_with_the_careful_checks(fields: list[dict[str, object]]) -> None:
    remise = Remise("TPE0000", "1234567", "CBEMV", 1, 1, 978, datetime(2026, 11, 1, tzinfo=UTC),
                    RemiseTotals(), [RemiseTransaction(operation="purchase", result="approved",
                                                       **{"seq": n, **_GOOD_FIELDS, **f})
                                     for n, f in enumerate(fields, 1)])  # type: ignore[arg-type]
    careful = None
    seen: set[object] = set()
    try:
        for tx in remise.transactions:
            _check_transaction("remise", remise, tx, seen)  # type: ignore[arg-type]
            seen.add(tx.seq)
    except InvalidRemise as error:
        careful = error
    if careful is None:
        validate(remise)
    else:
        with pytest.raises(InvalidRemise):
            validate(remise)


@pytest.mark.parametrize(("name", "value"), [(name, value) for name, values in
                                             _FIELD_VALUES.items() for value in values])
def test_validate_fast_path_accepts_exactly_what_the_careful_checks_accept(
        name: str, value: object) -> None:
    _validate_agrees_with_the_careful_checks([{name: value}])


@settings(deadline=None, max_examples=300)
@given(st.lists(st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.integers(0, 6),
                                max_size=3), min_size=1, max_size=3))
def test_validate_agrees_with_the_careful_checks_on_mixed_remises(
        choices: list[dict[str, int]]) -> None:
    _validate_agrees_with_the_careful_checks([
        {name: _FIELD_VALUES[name][index % len(_FIELD_VALUES[name])]
         for name, index in fields.items()} for fields in choices])
