-- Reporting: what tickets and searches need beyond the initial schema.
-- The cardholder ticket prints the merchant's city under its trade name.
ALTER TABLE contracts ADD COLUMN city text;

-- Searches by issuer and product (meal-voucher issuers, card products), per month.
CREATE INDEX transactions_issuer_idx ON transactions (issuer, tx_at);
CREATE INDEX transactions_product_idx ON transactions (product, tx_at);
