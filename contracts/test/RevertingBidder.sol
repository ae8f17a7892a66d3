// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAcceptingRegistry, IAttackedMarket} from "./IAttackedMarket.sol";

/// @title RevertingBidder
/// @notice Test-only griefer: a bidder (and buyer) that refuses every Ether transfer, to show it
/// cannot block higher bids, finalization or anyone else's withdrawal.
contract RevertingBidder {
    IAttackedMarket private immutable _market;

    /// @notice This contract never accepts Ether.
    error RevertingBidderRefusesEther();

    constructor(IAttackedMarket market_) {
        _market = market_;
    }

    /// @notice Refuses all Ether.
    receive() external payable {
        revert RevertingBidderRefusesEther();
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

    /// @notice Tries to withdraw this contract's credit (fails: `receive` reverts).
    function withdraw() external {
        _market.withdraw();
    }
}
