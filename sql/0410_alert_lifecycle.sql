-- The alerting system adopts `alerts` (0201): its lifecycle, its history and
-- the outcome of every delivery.
--
-- The lifecycle is kept beside `alerts`, one row per alert, rather than as
-- new columns: the daemon's outbox maps every column of `alerts` onto its
-- own record, and must keep working unchanged.

ALTER TABLE alerts
    ADD CONSTRAINT alerts_lifecycle_status
    CHECK (status IN ('open', 'acknowledged', 'resolved', 'accepted'));

-- notified_sha256 is the digest (severity and evidence, without `observed`)
-- of the version last sent; an open or acknowledged alert whose digest
-- differs is due. accepted_sha256 is the digest that was accepted.
CREATE TABLE alert_lifecycle (
    alert_id         bigint      PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    accepted_at      timestamptz,
    accepted_by      text,
    accepted_sha256  bytea,
    note             text,
    notified_sha256  bytea,
    notified_at      timestamptz,
    CHECK (accepted_at IS NULL OR length(btrim(note)) > 0)
);

-- Every status change of an alert: who, from what, to what, why.
CREATE TABLE alert_events (
    id           bigserial   PRIMARY KEY,
    alert_id     bigint      NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    from_status  text,
    to_status    text        NOT NULL,
    actor        text        NOT NULL,
    note         text,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

-- One row per delivery of one version of an alert through one channel,
-- after its retries: delivered or not, how many attempts, the last error.
CREATE TABLE alert_deliveries (
    id               bigserial   PRIMARY KEY,
    alert_id         bigint      NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel          text        NOT NULL,
    event            text        NOT NULL,
    message_id       text        NOT NULL,
    evidence_sha256  bytea       NOT NULL,
    delivered        boolean     NOT NULL,
    attempts         integer     NOT NULL,
    error            text,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert_id, id);
