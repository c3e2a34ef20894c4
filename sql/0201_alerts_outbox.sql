-- Alerts raised by the daemon, one row per (rule, subject). A repeat bumps
-- occurrences and last_seen_at and replaces the evidence; a resolved alert
-- that fires again is open again. The alerting system adopts this table.
CREATE TABLE alerts (
    id             bigserial   PRIMARY KEY,
    rule           text        NOT NULL,
    subject        text        NOT NULL,
    severity       text        NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    status         text        NOT NULL DEFAULT 'open',
    evidence       jsonb       NOT NULL DEFAULT '{}',
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    occurrences    integer     NOT NULL DEFAULT 1,
    UNIQUE (rule, subject)
);
CREATE INDEX alerts_open ON alerts (status, last_seen_at);
