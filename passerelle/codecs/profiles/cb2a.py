"""CB2A (terminal side): ISO 8583 with the French CB usage, version digit 0.

What the four reference messages in shared/vectors/cb2a prove: MTI in 2 BCD bytes, 8-byte
binary bitmaps, fixed numerics in packed BCD left-padded to whole bytes, LLVAR numerics (2,
32, 33, 35) with a 1-byte binary DIGIT count then left-padded BCD (track 2 separator nibble
D), alphanumerics as fixed-length ASCII, fields 44/47 as a 1-byte length then ASCII TLV,
55/59 as a 1-byte length then 2-byte-tag TLV.

Our choices where no public CB2A text exists (written down as the brief asks):
- every variable field uses the same 1-byte binary length (so at most 255 units), as every
  variable field seen on the wire does: CB2A messages were sized for X.25 packets, and
  ISO's LLL fields (46, 48, 56-63, 104-127) never exceed 255 bytes in CB usage;
- fields 12/13 are the ISO 1987 local time hhmmss and date MMDD (the vectors show n6/n4),
  field 39 is the 2-character CB response code, 24 the 3-digit function code (0804 sign-on
  862, 0844 turn 851/close 860), 74-89 the batch totals with ISO 1987 sizes;
- binary-kind fields are raw bytes, their length counted in bytes.
"""

from __future__ import annotations

from passerelle.codecs.fields import Data, Kind, Prefix
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles.table import parse_table


def _defaults(kind: Kind, var: int) -> dict[str, object]:
    data = {Kind.N: Data.BCD, Kind.Z: Data.BCD, Kind.B: Data.BINARY}.get(kind, Data.ASCII)
    return {"data": data, "prefix": Prefix.BINARY, "count_digits": True}


TABLE = """
2   n   ..19   Primary account number | mask=pan
3   n   6      Processing code
4   n   12     Amount, transaction
5   n   12     Amount, reconciliation
6   n   12     Amount, cardholder billing
7   n   10     Transmission date and time (MMDDhhmmss)
8   n   8      Amount, cardholder billing fee
9   n   8      Conversion rate, reconciliation
10  n   8      Conversion rate, cardholder billing
11  n   6      System trace audit number
12  n   6      Time, local transaction (hhmmss)
13  n   4      Date, local transaction (MMDD)
14  n   4      Date, expiration (YYMM)
15  n   4      Date, settlement
16  n   4      Date, conversion
17  n   4      Date, capture
18  n   4      Merchant type (MCC)
19  n   3      Acquiring institution country code
20  n   3      PAN extended country code
21  n   3      Forwarding institution country code
22  n   3      Point of service entry mode
23  n   3      Card sequence number
24  n   3      Function code
25  n   2      Point of service condition code
26  n   2      Point of service PIN capture code
27  n   1      Authorization identification response length
28  an  9      Amount, transaction fee
29  an  9      Amount, settlement fee
30  an  9      Amount, transaction processing fee
31  an  9      Amount, settlement processing fee
32  n   ..11   Acquiring institution identification code
33  n   ..11   Forwarding institution identification code
34  ans ..28   Primary account number, extended | mask=pan
35  z   ..37   Track 2 data | mask=track
36  z   ..104  Track 3 data | mask=track
37  an  12     Retrieval reference number
38  an  6      Authorization identification response
39  an  2      Response code
40  an  3      Service restriction code
41  ans 8      Card acceptor terminal identification
42  ans 15     Card acceptor identification code
43  ans 40     Card acceptor name/location
44  ans ..255  Additional response data | data=binary sub=ascii-tlv
45  ans ..76   Track 1 data | mask=track
46  ans ..255  Additional data, ISO
47  ans ..255  Additional data, national | data=binary sub=ascii-tlv
48  ans ..255  Additional data, private
49  n   3      Currency code, transaction
50  n   3      Currency code, reconciliation
51  n   3      Currency code, cardholder billing
52  b   8      Personal identification number (PIN) data | mask=secret
53  n   16     Security related control information
54  ans ..120  Additional amounts
55  b   ..255  Integrated circuit card system related data | sub=cb-tlv
56  ans ..255  Reserved for ISO use
57  ans ..255  Reserved for national use
58  ans ..255  Reserved for national use
59  b   ..255  Reserved for national use (CB data) | sub=cb-tlv
60  ans ..255  Reserved for national use
61  ans ..255  Reserved for private use
62  ans ..255  Reserved for private use
63  ans ..255  Reserved for private use
64  b   8      Message authentication code (MAC)
66  n   1      Settlement code
67  n   2      Extended payment code
68  n   3      Receiving institution country code
69  n   3      Settlement institution country code
70  n   3      Network management information code
71  n   4      Message number
72  n   4      Message number, last
73  n   6      Date, action (YYMMDD)
74  n   10     Credits, number
75  n   10     Credits, reversal number
76  n   10     Debits, number
77  n   10     Debits, reversal number
78  n   10     Transfer, number
79  n   10     Transfer, reversal number
80  n   10     Inquiries, number
81  n   10     Authorizations, number
82  n   12     Credits, processing fee amount
83  n   12     Credits, transaction fee amount
84  n   12     Debits, processing fee amount
85  n   12     Debits, transaction fee amount
86  n   16     Credits, amount
87  n   16     Credits, reversal amount
88  n   16     Debits, amount
89  n   16     Debits, reversal amount
90  n   42     Original data elements
91  an  1      File update code
92  an  2      File security code
93  an  5      Response indicator
94  an  7      Service indicator
95  an  42     Replacement amounts
96  b   8      Message security code | mask=secret
97  an  17     Amount, net settlement
98  ans 25     Payee
99  n   ..11   Settlement institution identification code
100 n   ..11   Receiving institution identification code
101 ans ..17   File name
102 ans ..28   Account identification 1
103 ans ..28   Account identification 2
104 ans ..100  Transaction description
105 ans ..255  Reserved for ISO use
106 ans ..255  Reserved for ISO use
107 ans ..255  Reserved for ISO use
108 ans ..255  Reserved for ISO use
109 ans ..255  Reserved for ISO use
110 ans ..255  Reserved for ISO use
111 ans ..255  Reserved for ISO use
112 ans ..255  Reserved for national use
113 ans ..255  Reserved for national use
114 ans ..255  Reserved for national use
115 ans ..255  Reserved for national use
116 ans ..255  Reserved for national use
117 ans ..255  Reserved for national use
118 ans ..255  Reserved for national use
119 ans ..255  Reserved for national use
120 ans ..255  Reserved for private use
121 ans ..255  Reserved for private use
122 ans ..255  Reserved for private use
123 ans ..255  Reserved for private use
124 ans ..255  Reserved for private use
125 ans ..255  Reserved for private use
126 ans ..255  Reserved for private use
127 ans ..255  Reserved for private use
128 b   8      Message authentication code (MAC)
"""

CB2A = Profile.build(
    "cb2a", parse_table(TABLE, _defaults), mti_bcd=True, bitmap_hex=False,
    description="CB2A terminal side: BCD MTI, binary bitmap, BCD numerics, 1-byte lengths",
)
CB2A_EBCDIC = CB2A.with_text_encoding("cp500", "cb2a-ebcdic")
