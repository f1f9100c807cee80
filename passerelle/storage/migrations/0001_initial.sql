-- passerelle schema, version 1.
-- Money: bigint minor units + smallint ISO 4217 numeric currency. Time: timestamptz (UTC).
-- Cards: pan_masked (first 6 + last 4), pan_hmac (keyed HMAC-SHA256) + key version, expiry.
-- There is deliberately no column able to hold a full PAN, track 2, CVV or PIN block.

-- Merchants (commerçants) own contracts; SIRET identifies the establishment.
CREATE TABLE merchants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    trade_name  text,
    siret       text CHECK (siret ~ '^[0-9]{14}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- An acceptor contract with an acquirer for one application. The rang distinguishes the
-- points of sale of one contract; the bank code names the acquirer bank.
CREATE TABLE contracts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id      bigint REFERENCES merchants (id),
    contract_number  text NOT NULL CHECK (contract_number <> ''),
    rang             text NOT NULL DEFAULT '000',
    bank_code        text NOT NULL CHECK (bank_code ~ '^[0-9]{5}$'),
    application      text NOT NULL CHECK (application <> ''),
    acquirer         text,
    label            text,
    trade_name       text,
    siret            text CHECK (siret ~ '^[0-9]{14}$'),
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (contract_number, application)
);
CREATE INDEX contracts_merchant_idx ON contracts (merchant_id);
CREATE INDEX contracts_siret_idx ON contracts (siret);

-- A payment terminal (TPE). contract_id is its current contract; remises keep the contract
-- they were collected under, so moving a terminal leaves its history where it was.
CREATE TABLE terminals (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial       text NOT NULL UNIQUE CHECK (serial <> ''),
    maker        text,
    itp          text,
    contract_id  bigint REFERENCES contracts (id),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminals_contract_idx ON terminals (contract_id);

-- Which contract a terminal was on, and when (the audit trail of moves).
CREATE TABLE terminal_contracts (
    terminal_id  bigint NOT NULL REFERENCES terminals (id),
    contract_id  bigint NOT NULL REFERENCES contracts (id),
    valid_from   timestamptz NOT NULL DEFAULT now(),
    valid_to     timestamptz,
    PRIMARY KEY (terminal_id, valid_from),
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);

-- Creates the monthly partition of `parent` holding `month`, moving into it any rows that
-- had landed in the default partition (rows are never refused for lack of a partition).
-- Partitions are named <parent>_pYYYYMM. Returns false when it already existed.
CREATE FUNCTION passerelle_ensure_month_partition(parent text, month date)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month')
                      AT TIME ZONE 'UTC';
    part text := format('%s_p%s', parent, to_char(month, 'YYYYMM'));
    key text;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT a.attname INTO STRICT key
      FROM pg_partitioned_table p
      JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
     WHERE p.partrelid = parent::regclass;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   part, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved',
                   parent || '_default', key, lo, key, hi, part);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, part, lo, hi);
    RETURN true;
END
$fn$;

-- One row per remise ever stored: the key that makes a repeated batch (same terminal,
-- contract, application, remise number) stored once, across every monthly partition.
CREATE TABLE remise_keys (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    terminal_serial  text NOT NULL,
    contract_number  text NOT NULL,
    application      text NOT NULL,
    remise_number    integer NOT NULL,
    collected_at     timestamptz NOT NULL,
    UNIQUE (terminal_serial, contract_number, application, remise_number)
);
CREATE INDEX remise_keys_collected_idx ON remise_keys (collected_at);

-- A remise: one télécollecte batch of one terminal for one contract and application.
-- declared_* come from the terminal's 0506 totals, computed_* from the stored transactions.
CREATE TABLE remises (
    id                          bigint NOT NULL,
    collected_at                timestamptz NOT NULL,
    terminal_id                 bigint NOT NULL,
    terminal_serial             text NOT NULL,
    maker                       text,
    itp                         text,
    contract_id                 bigint NOT NULL,
    contract_number             text NOT NULL,
    rang                        text NOT NULL,
    bank_code                   text NOT NULL,
    application                 text NOT NULL,
    acquirer                    text,
    label                       text,
    trade_name                  text,
    siret                       text,
    remise_number               integer NOT NULL CHECK (remise_number >= 0),
    file_number                 integer NOT NULL CHECK (file_number >= 0),
    ack_window                  smallint NOT NULL DEFAULT 0 CHECK (ack_window >= 0),
    currency                    smallint NOT NULL CHECK (currency BETWEEN 1 AND 999),
    declared_purchases_count     integer NOT NULL,
    declared_purchases_amount    bigint NOT NULL,
    declared_refunds_count       integer NOT NULL,
    declared_refunds_amount      bigint NOT NULL,
    declared_cancellations_count integer NOT NULL,
    declared_cancellations_amount bigint NOT NULL,
    declared_unauthorized_count  integer NOT NULL,
    declared_unauthorized_amount bigint NOT NULL,
    purchases_count              integer NOT NULL,
    purchases_amount             bigint NOT NULL,
    refunds_count                integer NOT NULL,
    refunds_amount               bigint NOT NULL,
    cancellations_count          integer NOT NULL,
    cancellations_amount         bigint NOT NULL,
    unauthorized_count           integer NOT NULL,
    unauthorized_amount          bigint NOT NULL,
    transaction_count            integer NOT NULL CHECK (transaction_count >= 0),
    net_amount                   bigint NOT NULL,
    is_correct                   boolean NOT NULL,
    status                       text NOT NULL,
    spooled                      boolean NOT NULL DEFAULT false,
    stored_at                    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, collected_at)
) PARTITION BY RANGE (collected_at);
CREATE TABLE remises_default PARTITION OF remises DEFAULT;

CREATE INDEX remises_collected_idx ON remises (collected_at);
CREATE INDEX remises_contract_idx ON remises (contract_number, collected_at);
CREATE INDEX remises_terminal_idx ON remises (terminal_serial, collected_at);
CREATE INDEX remises_siret_idx ON remises (siret, collected_at);
CREATE INDEX remises_bank_idx ON remises (bank_code, rang, collected_at);
CREATE INDEX remises_number_idx ON remises (remise_number);
CREATE INDEX remises_file_idx ON remises (file_number);
CREATE INDEX remises_trade_name_idx ON remises (lower(trade_name), collected_at);
CREATE INDEX remises_label_idx ON remises (lower(label), collected_at);
CREATE INDEX remises_incorrect_idx ON remises (collected_at) WHERE NOT is_correct;
CREATE INDEX remises_amount_idx ON remises (net_amount, collected_at);

CREATE SEQUENCE transactions_id_seq AS bigint;

-- A transaction as collected in a remise, with the remise's context copied in so that every
-- search filter is one indexed predicate on one partitioned table. remise_state says whether
-- the remise it came in was correct or showed a difference between declared and computed
-- totals. direction: purchases are debits, refunds and cancellations credits.
CREATE TABLE transactions (
    id                    bigint NOT NULL DEFAULT nextval('transactions_id_seq'),
    tx_at                 timestamptz NOT NULL,
    remise_id             bigint NOT NULL,
    seq                   integer NOT NULL,
    collected_at          timestamptz NOT NULL,
    remise_state          text NOT NULL CHECK (remise_state IN ('correct', 'difference')),
    remise_number         integer NOT NULL,
    file_number           integer NOT NULL,
    terminal_serial       text NOT NULL,
    maker                 text,
    contract_id           bigint NOT NULL,
    contract_number       text NOT NULL,
    rang                  text NOT NULL,
    bank_code             text NOT NULL,
    application           text NOT NULL,
    label                 text,
    trade_name            text,
    siret                 text,
    operation             text NOT NULL
                          CHECK (operation IN ('purchase', 'refund', 'cancellation')),
    direction             text NOT NULL CHECK (direction IN ('debit', 'credit')),
    result                text NOT NULL CHECK (result IN ('approved', 'declined')),
    response_code         text CHECK (response_code ~ '^[0-9A-Z]{2}$'),
    amount                bigint NOT NULL CHECK (amount >= 0),
    currency              smallint NOT NULL CHECK (currency BETWEEN 1 AND 999),
    pan_masked            text NOT NULL CHECK (pan_masked ~ '^[0-9]{6}[*]{2,9}[0-9]{4}$'),
    pan_hmac              bytea NOT NULL CHECK (length(pan_hmac) = 32),
    pan_hmac_key_version  smallint NOT NULL,
    expiry                text CHECK (expiry ~ '^[0-9]{2}(0[1-9]|1[0-2])$'),
    authorization_number  text,
    issuer                text,
    product               text,
    rrn                   text,
    stan                  text,
    aid                   text,
    PRIMARY KEY (id, tx_at)
) PARTITION BY RANGE (tx_at);
CREATE TABLE transactions_default PARTITION OF transactions DEFAULT;

CREATE INDEX transactions_at_idx ON transactions (tx_at);
CREATE INDEX transactions_remise_idx ON transactions (remise_id, seq);
CREATE INDEX transactions_contract_idx ON transactions (contract_number, tx_at);
CREATE INDEX transactions_terminal_idx ON transactions (terminal_serial, tx_at);
CREATE INDEX transactions_siret_idx ON transactions (siret, tx_at);
CREATE INDEX transactions_pan_hmac_idx ON transactions (pan_hmac);
CREATE INDEX transactions_last4_idx ON transactions (right(pan_masked, 4), tx_at);
CREATE INDEX transactions_amount_idx ON transactions (amount, tx_at);
CREATE INDEX transactions_auth_idx ON transactions (authorization_number);
CREATE INDEX transactions_rrn_idx ON transactions (rrn);

-- Online authorization log (0100/0110 and friends), written in batches off the hot path.
CREATE TABLE authorizations (
    id                    bigint GENERATED BY DEFAULT AS IDENTITY,
    at                    timestamptz NOT NULL,
    mti                   text NOT NULL CHECK (mti ~ '^[0-9]{4}$'),
    terminal_serial       text,
    contract_number       text,
    application           text,
    acquirer              text,
    stan                  text,
    rrn                   text,
    amount                bigint CHECK (amount >= 0),
    currency              smallint CHECK (currency BETWEEN 1 AND 999),
    pan_masked            text CHECK (pan_masked ~ '^[0-9]{6}[*]{2,9}[0-9]{4}$'),
    pan_hmac              bytea CHECK (length(pan_hmac) = 32),
    pan_hmac_key_version  smallint,
    expiry                text CHECK (expiry ~ '^[0-9]{2}(0[1-9]|1[0-2])$'),
    response_code         text,
    authorization_number  text,
    stand_in              boolean NOT NULL DEFAULT false,
    latency_ms            integer,
    error                 text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE authorizations_default PARTITION OF authorizations DEFAULT;
CREATE INDEX authorizations_at_idx ON authorizations (at);
CREATE INDEX authorizations_terminal_idx ON authorizations (terminal_serial, at);
CREATE INDEX authorizations_contract_idx ON authorizations (contract_number, at);

-- Store-and-forward queue of advices and reversals, shared by switchd nodes through
-- SELECT ... FOR UPDATE SKIP LOCKED. The message is kept encrypted under an HSM data key.
CREATE TABLE saf (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    acquirer           text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('advice', 'reversal')),
    message_key        text NOT NULL,
    payload_encrypted  bytea NOT NULL,
    data_key_version   smallint NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    delivered_at       timestamptz,
    UNIQUE (acquirer, message_key)
);
CREATE INDEX saf_pending_idx ON saf (acquirer, next_attempt_at, id) WHERE delivered_at IS NULL;

-- Portal and operator accounts. role decides what a user may do, user_scopes what they see.
CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text NOT NULL CHECK (position('@' IN email) > 1),
    display_name   text,
    role           text NOT NULL CHECK (role IN ('operator', 'merchant', 'fleet', 'finance')),
    password_hash  text,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz
);
CREATE UNIQUE INDEX users_email_idx ON users (lower(email));

CREATE TABLE user_scopes (
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contract_id  bigint NOT NULL REFERENCES contracts (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, contract_id)
);
CREATE INDEX user_scopes_contract_idx ON user_scopes (contract_id);

-- Single-use password links (72 hours); only a hash of the token is kept.
CREATE TABLE password_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text NOT NULL DEFAULT 'set_password',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX password_tokens_user_idx ON password_tokens (user_id);

CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text,
    details   jsonb NOT NULL DEFAULT '{}'::jsonb,
    source_ip inet
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, at);

-- White-label look of the portal and mails; one row per brand, 'default' unless configured.
CREATE TABLE branding (
    name             text PRIMARY KEY,
    display_name     text NOT NULL,
    primary_color    text NOT NULL DEFAULT '#003a70' CHECK (primary_color ~ '^#[0-9a-fA-F]{6}$'),
    secondary_color  text NOT NULL DEFAULT '#f2f2f2' CHECK (secondary_color ~ '^#[0-9a-fA-F]{6}$'),
    logo             bytea,
    logo_mime        text CHECK (logo_mime IN ('image/png', 'image/svg+xml', 'image/jpeg')),
    mail_sender_name text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO branding (name, display_name) VALUES ('default', 'passerelle');

-- The current month and the next three, so a fresh database ingests into real partitions.
SELECT passerelle_ensure_month_partition(parent, (date_trunc('month', now() AT TIME ZONE 'UTC')
                                                  + make_interval(months => m))::date)
  FROM unnest(ARRAY['remises', 'transactions', 'authorizations']) AS parent,
       generate_series(0, 3) AS m;
