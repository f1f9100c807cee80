"""PostgreSQL storage of remises (télécollecte batches), transactions and reference data.

`db` settings, connections and `StorageError`; `migrate` schema migrations; `embedded` the
private server used when no DSN is configured; `remises` the exactly-once télécollecte
writer; `spool` the fsynced journal used while PostgreSQL is away; `runtime.Storage` all of
it opened together for switchd; `retention` monthly partitions; `pan` masking and keyed HMAC
of card numbers; `fleet` contracts and terminals.
"""
