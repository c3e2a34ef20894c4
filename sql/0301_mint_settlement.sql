-- Whether an indexed RewardMinted has settled its intent (moved it to
-- `mined`). NULL while it has not: the intent is unknown, not submitted yet,
-- or differs from the mint. The tailer tries those again every round, since
-- an intent restored from a backup is submitted again after its mint was
-- indexed; the reconciler reports the ones that never settle.
--
-- Rows indexed before this column existed count as settled.
ALTER TABLE reward_mints ADD COLUMN settled_at timestamptz DEFAULT now();
ALTER TABLE reward_mints ALTER COLUMN settled_at DROP DEFAULT;
CREATE INDEX reward_mints_unsettled ON reward_mints (block_number)
    WHERE settled_at IS NULL;
