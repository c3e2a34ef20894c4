-- Custody audit: one row per create, import, decrypt, sign, re-key (master
-- key rotation), rotate, drain, grant and revoke of a signer key. Rows hold
-- what happened and to which address — never key material, tokens or
-- signatures. Written by haven.daemon.custody only; never updated.
CREATE TABLE custody_audit (
    id       bigserial   PRIMARY KEY,
    signer   text        NOT NULL,
    action   text        NOT NULL CHECK (action IN (
                 'create', 'import', 'decrypt', 'sign', 'rekey',
                 'rotate', 'drain', 'grant', 'revoke')),
    actor    text        NOT NULL,
    detail   jsonb       NOT NULL DEFAULT '{}',
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX custody_audit_signer ON custody_audit (signer, id);
