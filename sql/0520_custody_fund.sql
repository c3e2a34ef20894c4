-- Gas money sent to a signer from the deployer key (haven deploy --fund-wei,
-- a rotation's fund_wei) is a custody event too: its amount and transaction
-- go into the signer's audit trail as action 'fund'.
ALTER TABLE custody_audit DROP CONSTRAINT custody_audit_action_check;
ALTER TABLE custody_audit ADD CONSTRAINT custody_audit_action_check CHECK (
    action IN ('create', 'import', 'decrypt', 'sign', 'rekey',
               'rotate', 'drain', 'grant', 'revoke', 'fund'));
