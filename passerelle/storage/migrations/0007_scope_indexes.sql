-- Scoped searches: a portal user sees only the contracts of their scope, so every portal
-- search, total and export carries `contract_id = ANY(<the scope's contracts>)` next to its
-- date range. These indexes let the planner read only the scope's rows of the period (a
-- 100-terminal merchant is 5 % of a 2,000-terminal fleet) instead of every row of the
-- period filtered one by one.
--
-- Created on the partitioned parents, so every partition has them: the existing ones now,
-- and the months `passerelle_ensure_month_partition` (retention) attaches later, since
-- ATTACH PARTITION builds the parent's indexes on the partition it attaches.
--
-- IF NOT EXISTS: on a large live database a DBA may build them ahead without blocking
-- ingestion (CREATE INDEX ... ON ONLY the parent, CREATE INDEX CONCURRENTLY on each
-- partition, ALTER INDEX ... ATTACH PARTITION); this file then just records them.
CREATE INDEX IF NOT EXISTS remises_contract_id_idx ON remises (contract_id, collected_at);
CREATE INDEX IF NOT EXISTS transactions_contract_id_idx ON transactions (contract_id, tx_at);
