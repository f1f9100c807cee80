-- The date/time an authorization's acquirer request carried: the time part of the key its
-- answer was matched by (YYMMDDhhmmss towards an iso93-binary acquirer, MMDDhhmmss towards
-- iso87-ascii and cb2a). A terminal's reversal (0400/0420) that reaches another switchd node
-- than its 0100 is rebuilt from the approving row of this table: with this column it names
-- the original exactly (field 56 or 90) and gets the same SAF key as on the node that
-- approved, so the acquirer receives it once whichever nodes see it. NULL on rows written
-- before this column existed and on answers no acquirer request was built for.
ALTER TABLE authorizations ADD COLUMN acquirer_time text;
