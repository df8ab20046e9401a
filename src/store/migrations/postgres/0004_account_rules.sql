-- Account-wide rules across instances ([cluster]; also on one instance on PostgreSQL).
--
-- One live association per account: an account's claim, taken atomically before the engine
-- accepts a create (`INSERT ... ON CONFLICT ... DO UPDATE ... WHERE`, see
-- src/store/postgres.rs), and released in the very transaction that makes its association
-- final (the trigger below: whoever ends it — its owner, a new owner ending a dead one's
-- associations `gateway_restarted`, a restart). A claim whose association was never stored
-- (the instance crashed or its commit failed between the claim and the commit) frees the
-- account once it is a minute old.
CREATE TABLE account_claims (
    tenant text NOT NULL,
    account text NOT NULL,
    association text NOT NULL,
    -- The PBX the create named ('' when the engine chose it from the directory), and the
    -- instance that took the claim ('' without [cluster]): for the operator.
    pbx text NOT NULL,
    instance text NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (tenant, account));

CREATE FUNCTION cstagate_release_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM account_claims WHERE tenant = NEW.tenant AND account = NEW.account AND association = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER associations_release_claim AFTER INSERT OR UPDATE ON associations FOR EACH ROW WHEN (NEW.final) EXECUTE FUNCTION cstagate_release_claim();

-- The associations in flight before this version hold their accounts.
INSERT INTO account_claims (tenant, account, association, pbx, instance, at)
    SELECT DISTINCT ON (tenant, account) tenant, account, id, pbx, '', now() FROM associations WHERE NOT final ORDER BY tenant, account, seq DESC;
