// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";

/// @title HAVEN (HNV), the reward token minted for partner events
/// @author haven
/// @notice An 18-decimal ERC-20 that minters issue at most once per reward
/// intent, so a retried or replayed mint can never pay twice.
/// @dev The intent id is the off-chain service's idempotency key. Recording it
/// on-chain makes double payment impossible even when the service loses track
/// of a broadcast transaction and sends a second one for the same intent.
contract HNV is ERC20, ERC20Burnable, AccessControl {
    /// @notice Role allowed to call `mintReward`; granted by the admin.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @dev Every intent id that has been minted, forever: ids are never reused.
    mapping(bytes32 intentId => bool minted) private _mintedIntents;

    /// @notice A reward of `amount` base units was minted to `to` for `intentId`.
    /// @dev Emitted right after the standard `Transfer(address(0), to, amount)`.
    /// @param intentId The off-chain intent this mint settles.
    /// @param to The recipient of the reward.
    /// @param amount The amount minted, in base units (10**-18 HNV).
    /// @param minter The account holding MINTER_ROLE that sent the mint.
    event RewardMinted(
        bytes32 indexed intentId,
        address indexed to,
        uint256 amount,
        address indexed minter
    );

    /// @notice `intentId` was minted before; nothing was minted this time.
    /// @param intentId The intent id that is already recorded.
    error IntentAlreadyMinted(bytes32 intentId);

    /// @notice A reward of zero base units was requested.
    error ZeroAmount();

    /// @notice Deploy the token with no supply and no minter.
    /// @param admin The account that may grant and revoke roles, MINTER_ROLE
    /// included. It cannot mint until it grants that role to itself.
    constructor(address admin) ERC20("HAVEN", "HNV") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Mint `amount` base units to `to` as the reward for `intentId`.
    /// @dev Reverts with `ZeroAmount` for a zero amount, `IntentAlreadyMinted`
    /// for a recorded intent id, and OpenZeppelin's `ERC20InvalidReceiver` for
    /// the zero address. The amount is checked first so that a corrupted retry
    /// fails loudly instead of reading as an already settled intent.
    /// @param to The recipient of the reward.
    /// @param amount The amount to mint, in base units; must not be zero.
    /// @param intentId The off-chain intent this mint settles; usable once.
    function mintReward(
        address to,
        uint256 amount,
        bytes32 intentId
    ) external onlyRole(MINTER_ROLE) {
        if (amount == 0) revert ZeroAmount();
        if (_mintedIntents[intentId]) revert IntentAlreadyMinted(intentId);

        _mintedIntents[intentId] = true;
        _mint(to, amount);
        emit RewardMinted(intentId, to, amount, _msgSender());
    }

    /// @notice Tell whether a reward was already minted for `intentId`.
    /// @param intentId The off-chain intent id to look up.
    /// @return minted True once `mintReward` succeeded for this intent id.
    function isMinted(bytes32 intentId) external view returns (bool minted) {
        return _mintedIntents[intentId];
    }
}
