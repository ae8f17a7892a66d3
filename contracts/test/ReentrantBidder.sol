// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAcceptingRegistry, IAttackedMarket} from "./IAttackedMarket.sol";

/// @title ReentrantBidder
/// @notice Test-only attacker: a bidder whose `receive` re-enters the market while a withdrawal
/// is sending it Ether (withdraw, bid and/or closeConnection, as armed). Every re-entry attempt is
/// recorded with its outcome. With `bubble` set, a failed re-entry's revert data is re-thrown from
/// `receive`, so the market's Ether transfer itself fails.
contract ReentrantBidder {
    /// @notice One re-entrant call made from `receive`.
    struct Attempt {
        uint8 kind;
        bool ok;
        bytes revertData;
    }

    uint8 public constant REENTER_WITHDRAW = 1;
    uint8 public constant REENTER_BID = 2;
    uint8 public constant REENTER_CLOSE = 4;

    IAttackedMarket private immutable _market;

    uint8 private _mode;
    bool private _bubble;
    uint256 private _bidLot;
    uint256 private _bidPrice;
    uint256 private _bidValue;
    uint256 private _closeLot;

    /// @notice Total Ether this contract has received from anyone.
    uint256 public received;
    /// @notice Re-entry attempts, in order.
    Attempt[] public attempts;

    constructor(IAttackedMarket market_) {
        _market = market_;
    }

    /// @notice Ether received: re-enter the market as armed (once per arming).
    receive() external payable {
        received += msg.value;
        uint8 mode = _mode;
        // Disarm first so a re-entry that did succeed cannot recurse forever.
        _mode = 0;
        if (mode & REENTER_WITHDRAW != 0) {
            _try(REENTER_WITHDRAW, abi.encodeCall(IAttackedMarket.withdraw, ()), 0);
        }
        if (mode & REENTER_BID != 0) {
            _try(REENTER_BID, abi.encodeCall(IAttackedMarket.bid, (_bidLot, _bidPrice)), _bidValue);
        }
        if (mode & REENTER_CLOSE != 0) {
            _try(REENTER_CLOSE, abi.encodeCall(IAttackedMarket.closeConnection, (_closeLot)), 0);
        }
    }

    /// @notice Sets what the next `receive` does: `mode` is a mask of the REENTER_* flags.
    function arm(
        uint8 mode,
        bool bubble,
        uint256 bidLot,
        uint256 bidPrice,
        uint256 bidValue,
        uint256 closeLot
    ) external {
        _mode = mode;
        _bubble = bubble;
        _bidLot = bidLot;
        _bidPrice = bidPrice;
        _bidValue = bidValue;
        _closeLot = closeLot;
    }

    /// @notice Accepts a meter the operator offered to this contract (bidders need a load meter).
    function acceptMeter(IAcceptingRegistry registry, address meter) external {
        registry.acceptMeter(meter);
    }

    /// @notice Bids on the market with the Ether sent along.
    function bid(uint256 listingId, uint256 pricePerKWh) external payable {
        _market.bid{value: msg.value}(listingId, pricePerKWh);
    }

    /// @notice Closes a trade this contract bought.
    function closeConnection(uint256 tradeId) external {
        _market.closeConnection(tradeId);
    }

    /// @notice Withdraws this contract's credit (which triggers `receive`).
    function withdraw() external {
        _market.withdraw();
    }

    /// @notice Number of recorded re-entry attempts.
    function attemptCount() external view returns (uint256) {
        return attempts.length;
    }

    /// @dev Calls the market, records the outcome and, if armed to bubble, re-throws a failure.
    function _try(uint8 kind, bytes memory payload, uint256 value) private {
        (bool ok, bytes memory data) = address(_market).call{value: value}(payload);
        attempts.push(Attempt(kind, ok, data));
        if (!ok && _bubble) {
            assembly ("memory-safe") {
                revert(add(data, 32), mload(data))
            }
        }
    }
}
