// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title EnergyToken
/// @notice ERC-20 energy token of the micro-grid: 1 unit = 1 Wh, 3 decimals, so 1 token = 1 kWh.
/// Minted only by the meter registry for energy a supply meter measured; moved into the market's
/// escrow when its owner lists it; burned by the market as the energy is delivered.
/// @dev Both privileged addresses are immutable: they are predicted from the deployer's nonce and
/// checked by the deployment script, so no admin can ever grant minting to anyone else.
contract EnergyToken is ERC20 {
    address private immutable _registry;
    address private immutable _market;

    /// @notice The caller is not the meter registry.
    error EnergyTokenCallerNotRegistry(address caller);
    /// @notice The caller is not the market.
    error EnergyTokenCallerNotMarket(address caller);

    modifier onlyRegistry() {
        if (msg.sender != _registry) revert EnergyTokenCallerNotRegistry(msg.sender);
        _;
    }

    modifier onlyMarket() {
        if (msg.sender != _market) revert EnergyTokenCallerNotMarket(msg.sender);
        _;
    }

    constructor(address registry_, address market_) ERC20("Microgrid Energy", "MGE") {
        _registry = registry_;
        _market = market_;
    }

    /// @notice Mints `energyWh` to `to` for energy measured by a supply meter.
    /// Requirements: called by the meter registry. Emits {Transfer} from the zero address.
    function mint(address to, uint256 energyWh) external onlyRegistry {
        _mint(to, energyWh);
    }

    /// @notice Moves `energyWh` of `seller`'s tokens into the market's escrow.
    /// @dev The market calls this only from `list`, with `seller == msg.sender` of that call, so a
    /// listing is one transaction with no allowance. Requirements: called by the market.
    /// Emits {Transfer}.
    function escrowFrom(address seller, uint256 energyWh) external onlyMarket {
        _transfer(seller, _market, energyWh);
    }

    /// @notice Burns `energyWh` of the escrow held by the market: that energy was delivered.
    /// Requirements: called by the market. Emits {Transfer} to the zero address.
    function burnDelivered(uint256 energyWh) external onlyMarket {
        _burn(_market, energyWh);
    }

    /// @notice The meter registry, the only minter.
    function registry() external view returns (address) {
        return _registry;
    }

    /// @notice The market, the only escrow holder and burner.
    function market() external view returns (address) {
        return _market;
    }

    /// @notice 3 decimals: one token is one kWh, one unit is one Wh.
    function decimals() public pure override returns (uint8) {
        return 3;
    }
}
