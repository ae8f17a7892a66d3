// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice The part of EnergyMarket the test attackers call.
interface IAttackedMarket {
    function bid(uint256 listingId, uint256 pricePerKWh) external payable;
    function closeConnection(uint256 tradeId) external;
    function withdraw() external;
}

/// @notice The part of MeterRegistry a contract bidder calls to accept its load meter.
interface IAcceptingRegistry {
    function acceptMeter(address meter) external;
}
