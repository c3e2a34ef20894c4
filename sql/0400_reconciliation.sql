-- Reconciliation: every run with its cut and canonical document, and the
-- breaks runs find, one row per stable identity (class, subject).
--
-- A run's document is kept as the exact bytes written, so a re-run of the
-- same cut can be compared byte for byte. Only runs with moved_state moved
-- break and alert state; re-runs of older cuts are recorded but read-only.

CREATE TABLE reconciliation_runs (
    id               bigserial   PRIMARY KEY,
    cut_at           timestamptz NOT NULL,
    cut_block        bigint,
    cut_block_hash   text,
    verdict          text        NOT NULL CHECK (verdict IN (
                         'incomplete', 'breaks', 'reconciled_with_pending',
                         'reconciled')),
    document         bytea       NOT NULL,
    document_sha256  bytea       NOT NULL,
    scanned_logs     boolean     NOT NULL DEFAULT false,
    moved_state      boolean     NOT NULL DEFAULT false,
    trigger          text        NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX reconciliation_runs_cut ON reconciliation_runs (cut_at);

-- first_seen_at starts the current episode and drives aging; a resolved
-- break seen again starts a new episode. An acceptance holds for the
-- evidence digest it was given (accepted_sha256) and lapses when the
-- evidence changes.
CREATE TABLE breaks (
    class            text        NOT NULL,
    subject          text        NOT NULL,
    priority         text        NOT NULL CHECK (priority IN ('P1', 'P2', 'P3', 'warning')),
    evidence         jsonb       NOT NULL,
    evidence_sha256  bytea       NOT NULL,
    first_seen_at    timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    resolved_at      timestamptz,
    accepted_at      timestamptz,
    accepted_by      text,
    accepted_note    text,
    accepted_sha256  bytea,
    PRIMARY KEY (class, subject),
    CHECK (accepted_at IS NULL OR length(btrim(accepted_note)) > 0)
);
CREATE INDEX breaks_open ON breaks (first_seen_at) WHERE resolved_at IS NULL;
