-- The tailer's progress beyond the checkpoint itself.
--
-- confirmed_through is the highest block whose RewardMinted rows have been
-- looked at for promotion to `confirmed`. It moves in the same transaction as
-- the checkpoint, and back down with it when a reorg rolls blocks back, so a
-- restart never skips nor repeats a promotion.
ALTER TABLE tail_checkpoints ADD COLUMN confirmed_through bigint;

-- Balances and supply are summed per holder by the reconciler.
CREATE INDEX token_transfers_from ON token_transfers (from_address);
CREATE INDEX token_transfers_to ON token_transfers (to_address);
