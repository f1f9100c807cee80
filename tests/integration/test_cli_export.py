"""`mpctl export`: CSV read back by a real spreadsheet engine (LibreOffice headless).

The CSV is converted to .xlsx by `soffice --convert-to` with the import settings of a
French desktop (`;`, UTF-8, French locale, formulas evaluated — what a double click does
in a French Excel or LibreOffice), then read with openpyxl: amounts must be numbers,
dates dates, and identifiers keep their leading zeros as text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from passerelle.tickets import PARIS
from tests.integration.cli_helpers import mpctl, one_line_error
from tests.integration.history_db import history_database

pytestmark = pytest.mark.integration

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")
# CSV filter options: separator ';' (59), quote '"' (34), UTF-8 (76), from line 1, default
# column types, French locale (1036), ..., 13th token: evaluate formulas.
CSV_IMPORT = "CSV:59,34,76,1,,1036,false,true,false,false,false,false,true"


@pytest.fixture(scope="module")
def dsn(pg_dsn: str, _migrated_template: str) -> Iterator[str]:
    with history_database(pg_dsn, _migrated_template) as value:
        yield value


def to_xlsx(csv_path: Path, workdir: Path) -> Path:
    if SOFFICE is None:
        pytest.skip("LibreOffice (soffice) is not installed: apt-get install "
                    "libreoffice-calc-nogui")
    subprocess.run(
        [SOFFICE, f"-env:UserInstallation=file://{workdir / 'lo-profile'}", "--headless",
         f"--infilter={CSV_IMPORT}", "--convert-to", "xlsx", "--outdir", str(workdir),
         str(csv_path)],
        check=True, capture_output=True, timeout=180,
    )
    return workdir / (csv_path.stem + ".xlsx")


def read_sheet(path: Path) -> list[list[object]]:
    openpyxl = pytest.importorskip("openpyxl", reason="pip install openpyxl")
    sheet = openpyxl.load_workbook(path, data_only=True).active
    return [[cell.value for cell in row] for row in sheet.iter_rows()]


def test_transactions_csv_is_excel_ready(dsn, tmp_path) -> None:
    out = tmp_path / "transactions.csv"
    result = mpctl("export", "transactions", "--from", "2026-11-01", "--to", "2026-11-15",
                   "--output", str(out), dsn=dsn)
    assert result.returncode == 0, result.stderr
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8-sig")
    lines = text.split("\r\n")
    header = lines[0].split(";")
    assert header[:5] == ["Date", "Heure", "Terminal", "Fabricant", "Contrat"]
    assert "N° autorisation" in header and "Opération" in header  # accents survive
    assert '="0012345"' in text and "e+" not in text.lower().replace("emetteur", "")
    expected = json.loads(mpctl("transactions", "--from", "2026-11-01", "--to",
                                "2026-11-15", "--limit", "1", "--json", dsn=dsn).stdout)
    count = expected["totals"][0]["count"]
    assert len([line for line in lines[1:] if line]) == count
    assert f"{count} transactions written" in result.stderr

    rows = read_sheet(to_xlsx(out, tmp_path))
    head, body = rows[0], rows[1:]
    col = {name: head.index(name) for name in head}
    assert len(body) == count
    for row in body:
        assert isinstance(row[col["Date"]], datetime), row
        assert isinstance(row[col["Montant"]], (int, float)), row
        assert row[col["Contrat"]] in ("0012345", "0117074", "0221803", "9000000001",
                                       "C0000001")
        assert isinstance(row[col["N° remise"]], str) and len(row[col["N° remise"]]) == 6
        assert isinstance(row[col["SIRET"]], str) and len(row[col["SIRET"]]) == 14
    # Amounts read back equal the stored minor units, dates the Paris day.
    by_auth = {r["authorization_number"]: r for r in expected["rows"]}
    for row in body:
        stored = by_auth.get(row[col["N° autorisation"]])
        if stored is not None:
            assert round(row[col["Montant"]] * 100) == stored["amount"]
            paris = datetime.fromisoformat(stored["tx_at"]).astimezone(PARIS)
            assert row[col["Date"]].date() == paris.date()
            assert row[col["Heure"]] is not None
            break
    else:
        pytest.fail("the newest transaction is missing from the export")
    assert all(row[col["Date"]].month == 11 and row[col["Date"]].day <= 15 for row in body)


def test_remises_csv_numbers_and_leading_zeros(dsn, tmp_path) -> None:
    out = tmp_path / "remises.csv"
    result = mpctl("export", "remises", "--from", "01/11/2026", "--to", "15/11/2026",
                   "--contract", "0012345", "-o", str(out), dsn=dsn)
    assert result.returncode == 0, result.stderr
    rows = read_sheet(to_xlsx(out, tmp_path))
    head, body = rows[0], rows[1:]
    col = {name: head.index(name) for name in head}
    assert body and {r[col["Contrat"]] for r in body} == {"0012345"}
    assert {r[col["Rang"]] for r in body} == {"001"}
    assert all(isinstance(r[col["Montant net"]], (int, float)) for r in body)
    assert all(isinstance(r[col["Nb transactions"]], (int, float)) for r in body)
    assert all(isinstance(r[col["Date"]], datetime) for r in body)


@pytest.mark.parametrize(("args", "message"), [
    (("remises", "--from", "2026-10-01", "--to", "2026-11-15"),
     "error: --to: the export covers 46 days; at most 31 are allowed"),
    (("transactions", "--from", "2026-11-15", "--to", "2026-11-01"),
     "error: --from: 2026-11-15 is after --to 2026-11-01"),
    (("transactions", "--from", "2026-11-01", "--to", "2026-11-02", "--card", "1234"),
     "error: --card: malformed card number (12 to 19 digits)"),
    (("remises", "--to", "2026-11-02"), "error: --from: an export needs --from and --to"),
])
def test_refused_exports_write_nothing(dsn, tmp_path, args, message) -> None:
    out = tmp_path / "export.csv"
    result = mpctl("export", *args, "--output", str(out), dsn=dsn)
    assert result.returncode == 2
    assert one_line_error(result) == message
    assert list(tmp_path.iterdir()) == []
