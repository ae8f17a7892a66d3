// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice What the lens reads from EnergyMarket (the LotInfo layout, status as its enum index).
interface ILensMarket {
    struct LotInfo {
        uint8 status;
        address seller;
        address buyer;
        uint256 energyWh;
        uint256 pricePerKWh;
        uint256 deadline;
        uint256 deliveredWh;
        uint256 activeSince;
        uint256 depositWei;
        uint256 paidWei;
        uint256 closeRequestedAt;
    }

    function lotCount() external view returns (uint256);
    function lotOf(uint256 id) external view returns (LotInfo memory);
    function creditOf(address account) external view returns (uint256);
}

/// @notice What the lens reads from EnergyToken.
interface ILensToken {
    function totalSupply() external view returns (uint256);
    function balanceOf(address account) external view returns (uint256);
}

/// @title MarketLens
/// @notice Test-only reader: everything the conservation checks need, in one eth_call, so a
/// check after every step of a randomized sequence stays cheap on the in-process chain.
contract MarketLens {
    /// @notice The market's and token's state as far as conservation is concerned.
    struct View {
        uint256 marketWei;
        uint256 totalSupply;
        uint256 marketTokens;
        uint256[] credits; // of `accounts`, in order
        ILensMarket.LotInfo[] lots; // ids 1..lotCount
    }

    /// @notice Reads `market`, `token` and the credits of `accounts`.
    function read(ILensMarket market, ILensToken token, address[] calldata accounts)
        external
        view
        returns (View memory v)
    {
        v.marketWei = address(market).balance;
        v.totalSupply = token.totalSupply();
        v.marketTokens = token.balanceOf(address(market));
        v.credits = new uint256[](accounts.length);
        for (uint256 i; i < accounts.length; ++i) {
            v.credits[i] = market.creditOf(accounts[i]);
        }
        uint256 count = market.lotCount();
        v.lots = new ILensMarket.LotInfo[](count);
        for (uint256 id = 1; id <= count; ++id) {
            v.lots[id - 1] = market.lotOf(id);
        }
    }
}
