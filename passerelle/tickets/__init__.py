"""Tickets as the terminal printed them, rendered from stored rows: 24 columns of text.

The same text is printed by `mpctl ticket`, shown by the portal and put in mails (in a
monospace block), so that what a merchant or a cardholder compares is always identical.

Layout choices, after the ticket described by Cartes Bancaires (cartes-bancaires.com,
"Le ticket client") and real French TPE tickets:

- Payment ticket: the means of payment centred (CARTE BANCAIRE, AMERICAN EXPRESS, TITRE
  RESTAURANT) and the technology under it (EMV, SANS CONTACT, CONECS); then the AID, the
  card's application/product name, "LE dd/mm/yy A hh:mm:ss" in Europe/Paris, the trade name
  and city, the contract number, the bank code and rang, the card number, the transaction
  reference line, N° AUTO, "MONTANT:" with the amount right-aligned in euros with a comma
  ("12,50 EUR"), DEBIT or CREDIT (ANNULATION for a cancellation), and the copy's footer.
- Card number: the cardholder copy prints the last 4 digits only, the others as `#`
  (`############1234`, one `#` per hidden digit, as CB terminals print it); the merchant
  copy prints the stored mask (first 6 + last 4, `497010******1234`) and never more —
  the full PAN is not stored anywhere.
- Reference line: "N° TRANS" with the STAN, then the remise number, in place of the
  terminal's "terminal / transaction / télécollecte" triplet: the terminal's own logical
  number is not stored, and a number we would invent must not look genuine.
- The transaction cryptogram and the card expiry are not printed: the cryptogram is not
  stored, the expiry is hidden on cardholder tickets anyway.
- Declined transactions (stored as "non autorisées") print "OPERATION REFUSEE" and the
  response code instead of N° AUTO.
- Meal vouchers (CONECS): TITRE RESTAURANT / CONECS, the issuer (SWILE, EDENRED, ...) on
  its own line, and "TITRE-RESTAURANT" as product.
- Remise ticket: TELECOLLECTE, the application, date, merchant, contract, bank code and
  rang, terminal, REMISE N° and FICHIER N°, then for DEBITS (purchases), CREDITS
  (refunds), ANNULATIONS (cancellations) and NON AUTORISEES their count and amount, the
  NET; "REMISE CORRECTE", or "REMISE AVEC ECART" followed by the declared and computed
  count and amount of each kind that differs; "TRANSMISSION REUSSIE" (the remise was
  stored: there is no stored remise of a failed transmission).
- Text is upper case without accents (thermal printers' character sets), except "N°".
  Amounts never use a thousands separator: "1721,56 EUR", as terminals print them.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from passerelle.storage.queries import RemiseRow, TransactionRow

WIDTH = 24
PARIS = ZoneInfo("Europe/Paris")
Copy = Literal["client", "merchant"]

# ISO 4217 numeric -> (alphabetic code, minor-unit exponent), for what terminals handle.
CURRENCIES = {978: ("EUR", 2), 840: ("USD", 2), 826: ("GBP", 2), 756: ("CHF", 2),
              392: ("JPY", 0), 953: ("XPF", 0), 952: ("XOF", 0)}

# application -> (means of payment, technology)
APPLICATIONS = {
    "CBEMV": ("CARTE BANCAIRE", "EMV"),
    "CBCLESS": ("CARTE BANCAIRE", "SANS CONTACT"),
    "CBVAD": ("CARTE BANCAIRE", "VENTE A DISTANCE"),
    "PLBS": ("CARTE BANCAIRE", "PISTE"),
    "AMEX": ("AMERICAN EXPRESS", "EMV"),
    "JCB": ("JCB", "EMV"),
    "CONECS": ("TITRE RESTAURANT", "CONECS"),
}


def printable(text: str | None) -> str:
    """Upper case, accents removed: what a thermal printer's character set shows."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def money(amount: int, currency: int) -> str:
    """Minor units -> "12,50 EUR" (comma decimals, no thousands separator, never a float)."""
    code, exponent = CURRENCIES.get(currency, (f"{currency:03d}", 2))
    sign = "-" if amount < 0 else ""
    if exponent == 0:
        return f"{sign}{abs(amount)} {code}"
    whole, frac = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole},{frac:0{exponent}d} {code}"


def paris_stamp(at: datetime) -> str:
    """"LE 21/11/26 A 16:55:13" in Europe/Paris."""
    local = at.astimezone(PARIS)
    return f"LE {local:%d/%m/%y} A {local:%H:%M:%S}"


def card_number(pan_masked: str, copy: Copy) -> str:
    """Last 4 only on the cardholder copy; the stored mask, no more, on the merchant's."""
    if copy == "merchant":
        return pan_masked
    return "#" * (len(pan_masked) - 4) + pan_masked[-4:]


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def left(self, text: str | None) -> None:
        text = printable(text)
        while len(text) > WIDTH:  # wrap at the last space that fits, else hard
            cut = text.rfind(" ", 0, WIDTH + 1)
            cut = cut if cut > 0 else WIDTH
            self.lines.append(text[:cut].rstrip())
            text = text[cut:].lstrip()
        if text:
            self.lines.append(text)

    def center(self, text: str) -> None:
        self.lines.append(printable(text)[:WIDTH].center(WIDTH).rstrip())

    def right(self, text: str) -> None:
        self.lines.append(printable(text)[:WIDTH].rjust(WIDTH))

    def pair(self, label: str, value: str) -> None:
        """Label on the left, value on the right of one line (or two if it cannot fit)."""
        label, value = printable(label), printable(value)
        if len(label) + 1 + len(value) <= WIDTH:
            self.lines.append(label + value.rjust(WIDTH - len(label)))
        else:
            self.left(label)
            self.right(value)

    def blank(self) -> None:
        self.lines.append("")

    def rule(self) -> None:
        self.lines.append("-" * WIDTH)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _header(out: _Lines, application: str) -> None:
    means, technology = APPLICATIONS.get(application, (application, ""))
    out.center(means)
    if technology:
        out.center(technology)


def render_payment(tx: TransactionRow, *, city: str | None = None,
                   copy: Copy = "client") -> str:
    """The ticket of one stored transaction, cardholder (`client`) or merchant copy."""
    out = _Lines()
    _header(out, tx.application)
    if tx.aid:
        out.left(tx.aid)
    if tx.application == "CONECS" and tx.issuer:
        out.left(tx.issuer)
    out.left(tx.product or tx.application)
    out.left(paris_stamp(tx.tx_at))
    out.left(tx.trade_name or tx.label)
    out.left(city)
    out.left(tx.contract_number)
    out.left(f"{tx.bank_code} RANG {tx.rang}")
    out.left(card_number(tx.pan_masked, copy))
    out.left(f"N° TRANS {tx.stan or '-'} REM {tx.remise_number}")
    if tx.result == "declined":
        out.left("OPERATION REFUSEE")
        out.left(f"CODE REPONSE {tx.response_code or '-'}")
    elif tx.authorization_number:
        out.left(f"N° AUTO : {tx.authorization_number}")
    out.left("MONTANT :")
    out.right(money(tx.amount, tx.currency))
    if tx.operation == "cancellation":
        out.left("ANNULATION")
    out.left("DEBIT" if tx.direction == "debit" else "CREDIT")
    out.blank()
    out.left("TICKET CLIENT" if copy == "client" else "TICKET COMMERCANT")
    out.left("A CONSERVER")
    return out.text()


_KINDS = (("DEBITS", "purchases"), ("CREDITS", "refunds"),
          ("ANNULATIONS", "cancellations"), ("NON AUTORISEES", "unauthorized"))


def render_remise(remise: RemiseRow, *, city: str | None = None) -> str:
    """The télécollecte ticket of one stored remise."""
    out = _Lines()
    out.center("TELECOLLECTE")
    _header(out, remise.application)
    out.left(paris_stamp(remise.collected_at))
    out.left(remise.trade_name or remise.label)
    out.left(city)
    out.pair("CONTRAT", remise.contract_number)
    out.pair("BANQUE", f"{remise.bank_code} RANG {remise.rang}")
    out.pair("TERMINAL", remise.terminal_serial)
    out.pair("REMISE N°", f"{remise.remise_number:06d}")
    out.pair("FICHIER N°", f"{remise.file_number:06d}")
    out.rule()
    for label, kind in _KINDS:
        out.pair(label, str(getattr(remise, f"{kind}_count")))
        out.right(money(getattr(remise, f"{kind}_amount"), remise.currency))
    out.rule()
    out.left("TOTAL NET")
    out.right(money(remise.net_amount, remise.currency))
    out.rule()
    if remise.is_correct:
        out.left("REMISE CORRECTE")
    else:
        out.left("REMISE AVEC ECART")
        for label, kind in _KINDS:
            declared = (getattr(remise, f"declared_{kind}_count"),
                        getattr(remise, f"declared_{kind}_amount"))
            computed = (getattr(remise, f"{kind}_count"), getattr(remise, f"{kind}_amount"))
            if declared != computed:
                out.left(label)
                out.pair(" DECLARE", str(declared[0]))
                out.right(money(declared[1], remise.currency))
                out.pair(" CALCULE", str(computed[0]))
                out.right(money(computed[1], remise.currency))
    out.left("TRANSMISSION REUSSIE")
    return out.text()
