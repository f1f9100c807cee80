"""Passerelle: an autonomous French card-payment gateway (passerelle monétique autonome).

Terminals (TPE) dial it directly; it authorizes their payments through acquirers, collects
their daily batches (télécollectes, i.e. remises) and keeps their history in PostgreSQL.
"""

__version__ = "0.1.0"
