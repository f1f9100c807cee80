"""iso93-binary: an ISO 8583:1993 layout with binary bitmaps, for acquirer links.

The layout of jPOS's ISO93BPackager, which most acquirer hosts that speak "ISO 93 binary"
accept: MTI as 4 BCD digits (version digit 1: 1100, 1110, 1420, 1804 ...), binary bitmaps,
numerics packed BCD, LL/LLL lengths in BCD (1 and 2 bytes) counting digits for numerics and
bytes otherwise, text in ASCII, ICC data (55) as EMV BER-TLV. Field sizes follow ISO
8583:1993 (12 is YYMMDDhhmmss, 22 the 12-character POS data code, 39 the 3-digit action
code, 24 the function code).
"""

from __future__ import annotations

from passerelle.codecs.fields import Data, Kind, Prefix
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles.table import parse_table


def _defaults(kind: Kind, var: int) -> dict[str, object]:
    data = {Kind.N: Data.BCD, Kind.Z: Data.BCD, Kind.B: Data.BINARY}.get(kind, Data.ASCII)
    return {"data": data, "prefix": Prefix.BCD, "count_digits": True}


TABLE = """
2   n   ..19   Primary account number | mask=pan
3   n   6      Processing code
4   n   12     Amount, transaction
5   n   12     Amount, reconciliation
6   n   12     Amount, cardholder billing
7   n   10     Date and time, transmission (MMDDhhmmss)
8   n   8      Amount, cardholder billing fee
9   n   8      Conversion rate, reconciliation
10  n   8      Conversion rate, cardholder billing
11  n   6      Systems trace audit number
12  n   12     Date and time, local transaction (YYMMDDhhmmss)
13  n   4      Date, effective (YYMM)
14  n   4      Date, expiration (YYMM)
15  n   6      Date, settlement (YYMMDD)
16  n   4      Date, conversion (MMDD)
17  n   4      Date, capture (MMDD)
18  n   4      Merchant type
19  n   3      Country code, acquiring institution
20  n   3      Country code, primary account number
21  n   3      Country code, forwarding institution
22  an  12     Point of service data code
23  n   3      Card sequence number
24  n   3      Function code
25  n   4      Message reason code
26  n   4      Card acceptor business code
27  n   1      Approval code length
28  n   6      Date, reconciliation (YYMMDD)
29  n   3      Reconciliation indicator
30  n   24     Amounts, original
31  ans ..99   Acquirer reference data
32  n   ..11   Acquiring institution identification code
33  n   ..11   Forwarding institution identification code
34  ans ..28   Primary account number, extended | mask=pan
35  z   ..37   Track 2 data | mask=track
36  z   ...104 Track 3 data | mask=track
37  an  12     Retrieval reference number
38  an  6      Approval code
39  n   3      Action code
40  n   3      Service code
41  ans 8      Card acceptor terminal identification
42  ans 15     Card acceptor identification code
43  ans ..99   Card acceptor name/location
44  ans ..99   Additional response data
45  ans ..76   Track 1 data | mask=track
46  ans ...204 Amounts, fees
47  ans ...999 Additional data, national
48  ans ...999 Additional data, private
49  n   3      Currency code, transaction
50  n   3      Currency code, reconciliation
51  n   3      Currency code, cardholder billing
52  b   8      Personal identification number (PIN) data | mask=secret
53  b   ..48   Security related control information
54  ans ...120 Amounts, additional
55  b   ...255 Integrated circuit card (ICC) system related data | sub=ber-tlv
56  n   ..35   Original data elements
57  n   3      Authorization life cycle code
58  n   ..11   Authorizing agent institution identification code
59  ans ...999 Transport data
60  ans ...999 Reserved for national use
61  ans ...999 Reserved for national use
62  ans ...999 Reserved for private use
63  ans ...999 Reserved for private use
64  b   8      Message authentication code (MAC)
66  ans ...204 Amounts, original fees
67  n   2      Extended payment data
68  n   3      Country code, receiving institution
69  n   3      Country code, settlement institution
70  n   3      Country code, authorizing agent institution
71  n   8      Message number
72  ans ...999 Data record
73  n   6      Date, action (YYMMDD)
74  n   10     Credits, number
75  n   10     Credits, reversal number
76  n   10     Debits, number
77  n   10     Debits, reversal number
78  n   10     Transfer, number
79  n   10     Transfer, reversal number
80  n   10     Inquiries, number
81  n   10     Authorizations, number
82  n   10     Inquiries, reversal number
83  n   10     Payments, number
84  n   10     Payments, reversal number
85  n   10     Fee collections, number
86  n   16     Credits, amount
87  n   16     Credits, reversal amount
88  n   16     Debits, amount
89  n   16     Debits, reversal amount
90  n   10     Authorizations, reversal number
91  n   3      Country code, transaction destination institution
92  n   3      Country code, transaction originator institution
93  n   ..11   Transaction destination institution identification code
94  n   ..11   Transaction originator institution identification code
95  ans ..99   Card issuer reference data
96  b   ...999 Key management data | mask=secret
97  an  17     Amount, net reconciliation
98  ans 25     Payee
99  an  ..11   Settlement institution identification code
100 n   ..11   Receiving institution identification code
101 ans ..17   File name
102 ans ..28   Account identification 1
103 ans ..28   Account identification 2
104 ans ...100 Transaction description
105 n   16     Credits, chargeback amount
106 n   16     Debits, chargeback amount
107 n   10     Credits, chargeback number
108 n   10     Debits, chargeback number
109 ans ..84   Credits, fee amounts
110 ans ..84   Debits, fee amounts
111 ans ...999 Reserved for ISO use
112 ans ...999 Reserved for ISO use
113 ans ...999 Reserved for ISO use
114 ans ...999 Reserved for ISO use
115 ans ...999 Reserved for ISO use
116 ans ...999 Reserved for national use
117 ans ...999 Reserved for national use
118 ans ...999 Reserved for national use
119 ans ...999 Reserved for national use
120 ans ...999 Reserved for national use
121 ans ...999 Reserved for national use
122 ans ...999 Reserved for national use
123 ans ...999 Reserved for private use
124 ans ...999 Reserved for private use
125 ans ...999 Reserved for private use
126 ans ...999 Reserved for private use
127 ans ...999 Reserved for private use
128 b   8      Message authentication code (MAC)
"""

ISO93_BINARY = Profile.build(
    "iso93-binary", parse_table(TABLE, _defaults), mti_bcd=True, bitmap_hex=False,
    description="ISO 8583:1993 binary layout for acquirer links (BCD lengths, BER-TLV ICC data)",
)
