-- Partner webhook intake: replay bookkeeping, correlation, staking records
-- and security alerts.
--
-- A delivery may be applied by the webhook itself or by the backfill job
-- that pulls missed events from the partner's API. The two carry the same
-- event in different bytes, so each delivery also keeps the SHA-256 of its
-- canonical JSON (sorted keys, no insignificant whitespace): equal canonical
-- hashes are the same event; anything else under a known id is a conflict.

ALTER TABLE webhook_deliveries
    ADD COLUMN canonical_sha256  bytea,
    ADD COLUMN source            text NOT NULL DEFAULT 'webhook'
        CHECK (source IN ('webhook', 'backfill')),
    ADD COLUMN request_id        text;

ALTER TABLE partner_events
    ADD COLUMN request_id  text;
CREATE INDEX partner_events_intent ON partner_events (intent_id)
    WHERE intent_id IS NOT NULL;

-- Stake and unstake actions reported by Tribe. Recorded only: they earn no
-- reward. One row per (partner, stake, action), so a re-emitted action is
-- recorded once.
CREATE TABLE staking_records (
    partner      text          NOT NULL,
    stake_id     text          NOT NULL,
    action       text          NOT NULL CHECK (action IN ('stake', 'unstake')),
    member_id    text          NOT NULL,
    wallet       text          NOT NULL,
    amount_wei   numeric(78,0) NOT NULL CHECK (amount_wei >= 0),
    occurred_at  timestamptz,
    delivery_id  text          NOT NULL,
    recorded_at  timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (partner, stake_id, action)
);

-- Events a person must look at: a delivery id reused with another body,
-- for now. Kept minimal so the alerting system can adopt the table.
CREATE TABLE security_alerts (
    id               bigserial   PRIMARY KEY,
    kind             text        NOT NULL,
    partner          text,
    subject          text,
    detail           jsonb       NOT NULL DEFAULT '{}',
    request_id       text,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz
);
CREATE INDEX security_alerts_open ON security_alerts (raised_at)
    WHERE acknowledged_at IS NULL;
