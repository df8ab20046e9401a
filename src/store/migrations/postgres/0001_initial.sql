-- The gateway's state, with the meaning of the SQLite schema (src/store/sqlite.rs). Timestamps
-- are bigint milliseconds since the epoch, like the engine's `Millis`.

CREATE TABLE bindings (
    pbx text NOT NULL, extension text NOT NULL, tenant text NOT NULL, account text NOT NULL,
    did text, did_verified boolean NOT NULL, bound_at bigint NOT NULL,
    PRIMARY KEY (pbx, extension));
CREATE INDEX bindings_account ON bindings (tenant, account);

CREATE TABLE associations (
    id text PRIMARY KEY, tenant text NOT NULL, account text NOT NULL, pbx text NOT NULL,
    extension text NOT NULL, state text NOT NULL, final boolean NOT NULL, view jsonb NOT NULL,
    updated_at bigint NOT NULL);
-- The snapshot reads the associations in flight only.
CREATE INDEX associations_open ON associations (id) WHERE NOT final;

CREATE TABLE counters (key text PRIMARY KEY, value bigint NOT NULL);

CREATE TABLE proof_calls (
    pbx text NOT NULL, extension text NOT NULL, tenant text NOT NULL, account text NOT NULL,
    at bigint NOT NULL);
CREATE INDEX proof_calls_at ON proof_calls (at);

CREATE TABLE owner_blocks (
    tenant text NOT NULL, account text NOT NULL, pbx text NOT NULL, extension text NOT NULL,
    until bigint NOT NULL, PRIMARY KEY (tenant, account, pbx, extension));

CREATE TABLE audit (
    seq bigserial PRIMARY KEY, at bigint NOT NULL, tenant text NOT NULL, account text NOT NULL,
    pbx text NOT NULL, extension text NOT NULL, association text NOT NULL, step text NOT NULL,
    result text NOT NULL);
CREATE INDEX audit_account ON audit (tenant, account);
CREATE INDEX audit_extension ON audit (extension);

-- The audit log only grows: every UPDATE, DELETE or TRUNCATE statement on it fails, whatever it
-- touches (statement triggers, so even one matching no row), from the gateway or from raw SQL.
-- 23001 restrict_violation: an integrity rule, like SQLite's constraint error.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
