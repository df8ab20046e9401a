-- Several gateways on one database ([cluster]): one lease per PBX, whose owner alone holds the
-- PBX's CSTA link and writes for it; the instances' heartbeats, to spread the PBXs evenly.
-- Times are the database's clock (now(), clock_timestamp()); the instances' clocks are never
-- compared with it.
CREATE TABLE pbx_leases (
    pbx text PRIMARY KEY,
    owner text NOT NULL,
    -- Raised at each new owner: a write carrying an older one is refused (cstagate_fence).
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE instances (
    id text PRIMARY KEY,
    advertise text NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
-- The fence of a write batch for a PBX, its first statement: the batch goes on only if `owner`
-- holds the PBX's lease with `epoch` and the lease has not expired at this very moment; the
-- lease row stays locked (FOR SHARE) until the batch commits, so that no other instance takes
-- the PBX over in between. Otherwise SQLSTATE CSG01, the PBX in the detail, and the whole
-- transaction is rolled back.
CREATE FUNCTION cstagate_fence(p_pbx text, p_owner text, p_epoch bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM pbx_leases WHERE pbx = p_pbx AND owner = p_owner AND epoch = p_epoch AND expires_at > clock_timestamp() FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stale lease: this instance does not hold the lease of this PBX with this epoch' USING ERRCODE = 'CSG01', DETAIL = p_pbx;
    END IF;
END
$$;
