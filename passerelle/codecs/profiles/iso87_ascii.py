"""iso87-ascii: the common ISO 8583:1987 host-to-host layout, everything in ASCII.

Field for field the layout of pyiso8583's `default_ascii` spec (our test oracle): ASCII MTI,
bitmaps as 16 hex characters, numerics as ASCII digits, LL/LLL lengths as ASCII digits.
Binary fields (52, 64, 65, 96, 128, and 55) travel as hexadecimal characters, their length
counted in characters; we hand them to callers as bytes.
"""

from __future__ import annotations

from passerelle.codecs.fields import Data, Kind, Prefix
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles.table import parse_table


def _defaults(kind: Kind, var: int) -> dict[str, object]:
    data = Data.HEX if kind is Kind.B else Data.ASCII
    return {"data": data, "prefix": Prefix.ASCII}


TABLE = """
2   n   ..19   Primary account number | mask=pan
3   n   6      Processing code
4   n   12     Amount, transaction
5   n   12     Amount, settlement
6   n   12     Amount, cardholder billing
7   n   10     Transmission date and time
8   n   8      Amount, cardholder billing fee
9   n   8      Conversion rate, settlement
10  n   8      Conversion rate, cardholder billing
11  n   6      System trace audit number
12  n   6      Time, local transaction
13  n   4      Date, local transaction
14  n   4      Date, expiration
15  n   4      Date, settlement
16  n   4      Date, conversion
17  n   4      Date, capture
18  n   4      Merchant type
19  n   3      Acquiring institution country code
20  n   3      PAN country code
21  n   3      Forwarding institution country code
22  n   3      Point-of-service entry mode
23  n   3      PAN sequence number
24  n   3      Network international identifier (NII)
25  n   2      Point-of-service condition code
26  n   2      Point-of-service capture code
27  n   1      Authorizing identification response length
28  an  9      Amount, transaction fee
29  an  9      Amount, settlement fee
30  an  9      Amount, transaction processing fee
31  an  9      Amount, settlement processing fee
32  n   ..11   Acquiring institution identification code
33  n   ..11   Forwarding institution identification code
34  ans ..28   Primary account number, extended | mask=pan
35  z   ..37   Track 2 data | mask=track
36  ans ...104 Track 3 data | mask=track
37  an  12     Retrieval reference number
38  an  6      Authorization identification response
39  an  2      Response code
40  an  3      Service restriction code
41  ans 8      Card acceptor terminal identification
42  ans 15     Card acceptor identification code
43  ans 40     Card acceptor name/location
44  ans ..25   Additional response data
45  ans ..76   Track 1 data | mask=track
46  ans ...999 Additional data, ISO
47  ans ...999 Additional data, national
48  ans ...999 Additional data, private
49  n   3      Currency code, transaction
50  n   3      Currency code, settlement
51  n   3      Currency code, cardholder billing
52  b   16     PIN data | mask=secret
53  n   16     Security-related control information
54  ans ...240 Additional amounts
55  b   ...510 ICC data
56  ans ...999 Reserved ISO
57  ans ...999 Reserved national
58  ans ...999 Reserved national
59  ans ...999 Reserved national
60  ans ...999 Reserved national
61  ans ...999 Reserved private
62  ans ...999 Reserved private
63  ans ...999 Reserved private
64  b   16     Message authentication code (MAC)
65  b   16     Bitmap, extended
66  n   1      Settlement code
67  n   2      Extended payment code
68  n   3      Receiving institution country code
69  n   3      Settlement institution country code
70  n   3      Network management information code
71  n   4      Message number
72  n   4      Message number, last
73  n   6      Date, action
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
96  b   16     Message security code | mask=secret
97  an  17     Amount, net settlement
98  ans 25     Payee
99  n   ..11   Settlement institution identification code
100 n   ..11   Receiving institution identification code
101 ans ..17   File name
102 ans ..28   Account identification 1
103 ans ..28   Account identification 2
104 ans ...100 Transaction description
105 ans ...999 Reserved for ISO use
106 ans ...999 Reserved for ISO use
107 ans ...999 Reserved for ISO use
108 ans ...999 Reserved for ISO use
109 ans ...999 Reserved for ISO use
110 ans ...999 Reserved for ISO use
111 ans ...999 Reserved for ISO use
112 ans ...999 Reserved for national use
113 ans ...999 Reserved for national use
114 ans ...999 Reserved for national use
115 ans ...999 Reserved for national use
116 ans ...999 Reserved for national use
117 ans ...999 Reserved for national use
118 ans ...999 Reserved for national use
119 ans ...999 Reserved for national use
120 ans ...999 Reserved for private use
121 ans ...999 Reserved for private use
122 ans ...999 Reserved for private use
123 ans ...999 Reserved for private use
124 ans ...999 Reserved for private use
125 ans ...999 Reserved for private use
126 ans ...999 Reserved for private use
127 ans ...999 Reserved for private use
128 b   16     Message authentication code (MAC)
"""

ISO87_ASCII = Profile.build(
    "iso87-ascii", parse_table(TABLE, _defaults), mti_bcd=False, bitmap_hex=True,
    description="ISO 8583:1987 all-ASCII host-to-host layout (pyiso8583 default_ascii)",
)
