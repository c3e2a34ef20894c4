-- The admin audit log: one row per request to the admin API, allowed or
-- not. Who is a key fingerprint (a prefix of the key's SHA-256), never the
-- key; requests without a valid key are recorded as 'anonymous'.
--
-- An action that changes state in haven's own tables writes its row in the
-- same transaction as the change, so the log cannot miss a change that
-- happened nor show one that was rolled back.

CREATE TABLE admin_audit (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text        NOT NULL,
    action       text        NOT NULL,
    method       text        NOT NULL,
    path         text        NOT NULL,
    subject      text,
    outcome      text        NOT NULL CHECK (outcome IN (
                     'succeeded', 'refused', 'unauthorized', 'failed')),
    status_code  integer     NOT NULL,
    detail       jsonb       NOT NULL DEFAULT '{}',
    request_id   text        NOT NULL,
    remote_addr  text
);
CREATE INDEX admin_audit_at ON admin_audit (at);
CREATE INDEX admin_audit_actor ON admin_audit (actor, id);
CREATE INDEX admin_audit_subject ON admin_audit (subject, id)
    WHERE subject IS NOT NULL;
