-- The signing policy's books. policy_spend holds one row per intent the
-- first time it is signed for, in the transaction of that signature: the
-- daily caps sum it over the last 24 hours. policy_approvals holds the
-- operator's approval of an intent held over a cap; an approved intent is
-- signed whatever the caps say (every other rule still applies).
CREATE TABLE policy_spend (
    intent_id   bytea         PRIMARY KEY REFERENCES intents (id),
    partner     text          NOT NULL,
    amount_wei  numeric(78,0) NOT NULL CHECK (amount_wei > 0),
    signed_at   timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX policy_spend_signed_at ON policy_spend (signed_at);
CREATE INDEX policy_spend_partner ON policy_spend (partner, signed_at);

CREATE TABLE policy_approvals (
    intent_id    bytea       PRIMARY KEY REFERENCES intents (id),
    approved_by  text        NOT NULL,
    note         text,
    approved_at  timestamptz NOT NULL DEFAULT now()
);
