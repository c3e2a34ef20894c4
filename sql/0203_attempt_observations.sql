-- What the submitter learnt about each attempt from the node, apart from
-- the tailer's settlement (status, mined_block):
--   error_kind      the classified refusal of the last send (haven.chain
--                   kinds), cleared when a node accepts it again;
--   receipt_block,  the block and status (1 success, 0 reverted) of a
--   receipt_status  receipt the submitter saw for it. An observation only:
--                   a reorg can make it stale, and the tailer decides.
ALTER TABLE tx_attempts
    ADD COLUMN error_kind text,
    ADD COLUMN receipt_block bigint,
    ADD COLUMN receipt_status smallint;
CREATE INDEX tx_attempts_unresolved ON tx_attempts (signer, nonce)
    WHERE receipt_block IS NULL AND status IN ('signed', 'broadcast');
