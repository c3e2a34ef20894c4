-- Circuit breakers live in each daemon's memory; operators read and reset
-- them through the admin API, which runs in the listener. These two tables
-- carry that across processes.
--
-- breaker_states: each daemon reports every breaker it runs, every few
-- seconds and at once after a change, keyed by process (host:pid) and
-- breaker name. reset_id is the last reset request the process applied. A
-- daemon removes its rows when it stops; rows of a process that died go
-- stale (reported_at stops moving) and are shown as such.
--
-- breaker_resets: an operator's request to close a breaker now. Every
-- daemon running a breaker of that name applies each request once (newer
-- than its own start), then reports reset_id.

CREATE TABLE breaker_states (
    process               text             NOT NULL,
    name                  text             NOT NULL,
    state                 text             NOT NULL CHECK (state IN (
                              'closed', 'open', 'half_open')),
    consecutive_failures  integer          NOT NULL,
    opened_for_s          double precision,
    retry_in_s            double precision,
    reset_id              bigint           NOT NULL DEFAULT 0,
    reported_at           timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (process, name)
);

CREATE TABLE breaker_resets (
    id            bigserial   PRIMARY KEY,
    name          text        NOT NULL,
    requested_by  text        NOT NULL,
    request_id    text,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX breaker_resets_name ON breaker_resets (name, id);
