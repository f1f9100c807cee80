-- Claims a remise for storing, in one call: looks up its terminal and contract, inserts its
-- key unless it exists (waiting for a concurrent claimer to commit or roll back), inserts its
-- remise row when the key was ours, and returns what the writer needs next:
--
--   remise_id      the new id (stored = true), the existing one (stored = false), or NULL
--                  when the terminal or the contract is unknown (terminal_id or contract_id
--                  NULL then) -- nothing is written in that case, nor for a repeat;
--   stored_*       for a repeat, what was stored first (NULL: its remise row is gone, dropped
--                  by retention while its key stays);
--   the context    copied into every transaction row (terminal and contract columns).
--
-- A function rather than a statement sent with the remise: the writer sends it in the same
-- simple-protocol message as the COPY of the transactions (one round trip; see
-- passerelle/storage/remises.py), where a prepared statement cannot be used, and PL/pgSQL
-- keeps the plans of these statements for the session.
-- p_declared and p_computed hold the 8 totals in RemiseTotals' order: purchases count and
-- amount, refunds, cancellations, unauthorized.
CREATE FUNCTION passerelle_claim_remise(
    p_terminal_serial text, p_contract_number text, p_application text,
    p_remise_number integer, p_collected_at timestamptz, p_file_number integer,
    p_ack_window integer, p_currency integer, p_declared bigint[], p_computed bigint[],
    p_transaction_count integer, p_net_amount bigint, p_is_correct boolean, p_status text,
    p_spooled boolean,
    OUT remise_id bigint, OUT stored boolean, OUT stored_status text,
    OUT stored_correct boolean, OUT stored_count integer, OUT terminal_id bigint,
    OUT maker text, OUT contract_id bigint, OUT rang text, OUT bank_code text, OUT label text,
    OUT trade_name text, OUT siret text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    v_itp text;
    v_acquirer text;
BEGIN
    stored := false;
    SELECT t.id, t.maker, t.itp INTO terminal_id, maker, v_itp
      FROM terminals t WHERE t.serial = p_terminal_serial;
    SELECT c.id, c.rang, c.bank_code, c.acquirer, c.label,
           COALESCE(c.trade_name, m.trade_name), COALESCE(c.siret, m.siret)
      INTO contract_id, rang, bank_code, v_acquirer, label, trade_name, siret
      FROM contracts c LEFT JOIN merchants m ON m.id = c.merchant_id
     WHERE c.contract_number = p_contract_number AND c.application = p_application;
    IF terminal_id IS NULL OR contract_id IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO remise_keys (terminal_serial, contract_number, application, remise_number,
                             collected_at)
    VALUES (p_terminal_serial, p_contract_number, p_application, p_remise_number,
            p_collected_at)
    ON CONFLICT (terminal_serial, contract_number, application, remise_number) DO NOTHING
    RETURNING id INTO remise_id;
    IF remise_id IS NULL THEN  -- a repeat: what the first copy stored
        SELECT k.id, r.status, r.is_correct, r.transaction_count
          INTO remise_id, stored_status, stored_correct, stored_count
          FROM remise_keys k
          LEFT JOIN remises r ON r.id = k.id AND r.collected_at = k.collected_at
         WHERE k.terminal_serial = p_terminal_serial
           AND k.contract_number = p_contract_number
           AND k.application = p_application AND k.remise_number = p_remise_number;
        RETURN;
    END IF;
    INSERT INTO remises (
        id, collected_at, terminal_id, terminal_serial, maker, itp, contract_id,
        contract_number, rang, bank_code, application, acquirer, label, trade_name, siret,
        remise_number, file_number, ack_window, currency,
        declared_purchases_count, declared_purchases_amount, declared_refunds_count,
        declared_refunds_amount, declared_cancellations_count, declared_cancellations_amount,
        declared_unauthorized_count, declared_unauthorized_amount,
        purchases_count, purchases_amount, refunds_count, refunds_amount,
        cancellations_count, cancellations_amount, unauthorized_count, unauthorized_amount,
        transaction_count, net_amount, is_correct, status, spooled)
    VALUES (
        remise_id, p_collected_at, terminal_id, p_terminal_serial, maker, v_itp, contract_id,
        p_contract_number, rang, bank_code, p_application, v_acquirer, label, trade_name,
        siret, p_remise_number, p_file_number, p_ack_window, p_currency,
        p_declared[1], p_declared[2], p_declared[3], p_declared[4], p_declared[5],
        p_declared[6], p_declared[7], p_declared[8],
        p_computed[1], p_computed[2], p_computed[3], p_computed[4], p_computed[5],
        p_computed[6], p_computed[7], p_computed[8],
        p_transaction_count, p_net_amount, p_is_correct, p_status, p_spooled);
    stored := true;
END
$fn$;
