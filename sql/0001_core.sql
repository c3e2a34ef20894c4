-- Core schema: partner deliveries, reward intents, signers, transaction
-- attempts, the indexed chain and the tail checkpoint.
--
-- Amounts are numeric(78,0): integers in base units, wide enough for any
-- uint256. Addresses are stored checksummed (EIP-55). Hashes and intent ids
-- are raw bytes.

CREATE TABLE webhook_deliveries (
    partner        text        NOT NULL,
    delivery_id    text        NOT NULL,
    body_sha256    bytea       NOT NULL,
    status_code    integer     NOT NULL,
    response       jsonb       NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner, delivery_id)
);
CREATE INDEX webhook_deliveries_received_at ON webhook_deliveries (received_at);

-- Every request to a partner endpoint, accepted or not. Never the secret or
-- the signature header.
CREATE TABLE webhook_attempts (
    id           bigserial   PRIMARY KEY,
    partner      text        NOT NULL,
    delivery_id  text,
    status_code  integer     NOT NULL,
    outcome      text        NOT NULL,
    reason       text,
    remote_addr  text,
    request_id   text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_received_at ON webhook_attempts (received_at);

-- One row per authentic partner event (applied, parked or recorded only).
CREATE TABLE partner_events (
    id           bigserial   PRIMARY KEY,
    partner      text        NOT NULL,
    delivery_id  text        NOT NULL,
    event_type   text        NOT NULL,
    occurred_at  timestamptz,
    payload      jsonb       NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'parked', 'recorded', 'ignored')),
    intent_id    bytea,
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (partner, delivery_id)
);

-- A reward owed to a wallet. The id is keccak256 of the business key, so it
-- is the same off chain and on chain (HNV.mintReward's intentId) and a
-- re-emitted event can never make a second one.
CREATE TABLE intents (
    id              bytea       PRIMARY KEY CHECK (length(id) = 32),
    partner         text        NOT NULL,
    kind            text        NOT NULL,
    source_key      text        NOT NULL,
    wallet          text        NOT NULL,
    amount_wei      numeric(78,0) NOT NULL CHECK (amount_wei > 0),
    rule_version    text        NOT NULL,
    status          text        NOT NULL CHECK (status IN (
                        'held', 'ready', 'approval', 'submitted', 'mined',
                        'confirmed', 'voided', 'failed', 'rejected')),
    status_reason   text,
    signer          text,
    nonce           bigint,
    tx_hash         bytea,
    block_number    bigint,
    block_hash      bytea,
    request_id      text,
    reversed_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    ready_at        timestamptz,
    submitted_at    timestamptz,
    confirmed_at    timestamptz,
    UNIQUE (partner, kind, source_key),
    UNIQUE (signer, nonce)
);
CREATE INDEX intents_status ON intents (status, ready_at);

-- The history of every intent: one row per status change.
CREATE TABLE intent_events (
    id           bigserial   PRIMARY KEY,
    intent_id    bytea       NOT NULL REFERENCES intents (id),
    from_status  text,
    to_status    text        NOT NULL,
    reason       text,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX intent_events_intent ON intent_events (intent_id, id);

-- Custodial signers. encrypted_key is a Fernet token under the master key;
-- next_nonce moves only in the transaction that records the attempt using it.
CREATE TABLE signers (
    address        text        PRIMARY KEY,
    encrypted_key  bytea       NOT NULL,
    status         text        NOT NULL CHECK (status IN ('active', 'draining', 'revoked')),
    next_nonce     bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);

-- Every signed transaction, committed before it is sent. Several attempts
-- share a nonce when a transaction is re-priced.
CREATE TABLE tx_attempts (
    id                 bigserial   PRIMARY KEY,
    intent_id          bytea       NOT NULL REFERENCES intents (id),
    signer             text        NOT NULL REFERENCES signers (address),
    nonce              bigint      NOT NULL,
    tx_hash            bytea       NOT NULL UNIQUE,
    raw_tx             bytea       NOT NULL,
    max_fee_wei        numeric(78,0) NOT NULL,
    max_priority_fee_wei numeric(78,0) NOT NULL,
    gas_limit          bigint      NOT NULL,
    status             text        NOT NULL CHECK (status IN (
                           'signed', 'broadcast', 'mined', 'replaced', 'dropped', 'failed')),
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    broadcast_at       timestamptz,
    last_sent_at       timestamptz,
    sent_block         bigint,
    mined_block        bigint
);
CREATE INDEX tx_attempts_signer_nonce ON tx_attempts (signer, nonce);
CREATE INDEX tx_attempts_intent ON tx_attempts (intent_id);

-- Recent canonical block headers: the reorg detector walks parent hashes.
CREATE TABLE chain_blocks (
    number       bigint      PRIMARY KEY,
    hash         bytea       NOT NULL UNIQUE,
    parent_hash  bytea       NOT NULL,
    timestamp    bigint      NOT NULL
);

-- Every HNV Transfer on the canonical chain (mints, transfers, burns).
CREATE TABLE token_transfers (
    block_hash    bytea       NOT NULL,
    log_index     integer     NOT NULL,
    block_number  bigint      NOT NULL,
    tx_hash       bytea       NOT NULL,
    from_address  text        NOT NULL,
    to_address    text        NOT NULL,
    amount_wei    numeric(78,0) NOT NULL,
    PRIMARY KEY (block_hash, log_index)
);
CREATE INDEX token_transfers_block ON token_transfers (block_number);

-- Every RewardMinted(intentId, to, amount, minter) on the canonical chain.
CREATE TABLE reward_mints (
    block_hash    bytea       NOT NULL,
    log_index     integer     NOT NULL,
    block_number  bigint      NOT NULL,
    tx_hash       bytea       NOT NULL,
    intent_id     bytea       NOT NULL,
    to_address    text        NOT NULL,
    amount_wei    numeric(78,0) NOT NULL,
    minter        text        NOT NULL,
    PRIMARY KEY (block_hash, log_index)
);
CREATE INDEX reward_mints_intent ON reward_mints (intent_id);
CREATE INDEX reward_mints_block ON reward_mints (block_number);

-- Where the tailer stands: the last block fully indexed, moved in the same
-- transaction as the rows of that block.
CREATE TABLE tail_checkpoints (
    name          text        PRIMARY KEY,
    block_number  bigint      NOT NULL,
    block_hash    bytea       NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Deployment facts written by `haven deploy`.
CREATE TABLE deployments (
    chain_id       bigint      NOT NULL,
    token_address  text        NOT NULL,
    deploy_block   bigint      NOT NULL,
    tx_hash        bytea       NOT NULL,
    deployed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, token_address)
);
