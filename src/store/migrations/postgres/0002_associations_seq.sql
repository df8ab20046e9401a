-- The order associations were created in, for GET /v1/associations (newest first), as SQLite's
-- rowid gives it: an upsert keeps the row, so its seq stays that of the creation.
ALTER TABLE associations ADD COLUMN seq bigserial;
CREATE INDEX associations_seq ON associations (seq);
