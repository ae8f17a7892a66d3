// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

interface IEnergyTokenMinter {
    function mint(address to, uint256 energyWh) external;
}

interface IDeliverySettlement {
    function settleDelivery(address buyer, uint256 energyWh) external;
}

/// @title MeterRegistry
/// @notice The grid operator registers each DC meter: its device key, its owner, its kind and its
/// rated power. Meters report cumulative energy counters from their own key; the registry verifies
/// every reading (strictly newer, never backwards, physically possible at the rated power) and then
/// mints energy tokens for supply meters or settles the owner's open trade for load meters.
contract MeterRegistry is AccessControl {
    /// @notice What a meter measures.
    enum MeterKind {
        Supply, // PV -> battery: every Wh mints a token unit to the owner
        Load // battery -> consumer: every Wh settles the owner's open trade
    }

    /// @notice A meter as reported by {meterOf}.
    struct MeterInfo {
        address owner;
        MeterKind kind;
        bool active;
        uint16 ratedPowerW;
        uint40 cumulativeWh;
        uint32 readAt;
    }

    /// @dev One storage slot (160 + 40 + 32 + 16 + 8 bits), so a reading reads and writes one slot.
    struct Meter {
        address owner;
        uint40 cumulativeWh;
        uint32 readAt; // 0 until the first (baseline) reading
        uint16 ratedPowerW;
        uint8 flags;
    }

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");

    uint8 private constant _FLAG_LOAD = 1;
    uint8 private constant _FLAG_ACTIVE = 2;

    IEnergyTokenMinter private immutable _token;
    IDeliverySettlement private immutable _market;

    mapping(address meter => Meter) private _meters;

    /// @notice A meter was registered by the operator.
    event MeterRegistered(
        address indexed meter, address indexed owner, MeterKind kind, uint16 ratedPowerW
    );
    /// @notice A meter was deactivated by the operator; it can no longer report.
    event MeterDeactivated(address indexed meter, address indexed owner);
    /// @notice A meter reading was accepted. `deltaWh` is 0 for the baseline reading.
    event ReadingRecorded(address indexed meter, uint256 cumulativeWh, uint256 deltaWh);

    /// @notice The meter address or the owner address is zero.
    error MeterZeroAddress();
    /// @notice The rated power is zero.
    error MeterZeroRatedPower();
    /// @notice The meter address was registered before (meters are never re-registered).
    error MeterAlreadyRegistered(address meter);
    /// @notice No meter is registered at this address.
    error MeterNotRegistered(address meter);
    /// @notice The meter was deactivated by the operator.
    error MeterInactive(address meter);
    /// @notice The counter is not strictly greater than the last accepted one (replay or rewind).
    error MeterReadingNotNewer(uint256 lastWh, uint256 reportedWh);
    /// @notice The counter does not fit the registry's 40-bit counter.
    error MeterReadingOutOfRange(uint256 reportedWh);
    /// @notice The increase implies more power than the meter's rating over the elapsed time.
    error MeterReadingImplausible(uint256 deltaWh, uint256 maxWh, uint256 elapsedSeconds);

    constructor(address operator, address token_, address market_) {
        _grantRole(DEFAULT_ADMIN_ROLE, operator);
        _grantRole(OPERATOR_ROLE, operator);
        _token = IEnergyTokenMinter(token_);
        _market = IDeliverySettlement(market_);
    }

    /// @notice Registers `meter` (the device key its bridge sends from) for `owner`.
    /// Requirements: caller has OPERATOR_ROLE; addresses non-zero; rating non-zero; `meter` never
    /// registered before. Emits {MeterRegistered}.
    function registerMeter(address meter, address owner, MeterKind kind, uint16 ratedPowerW)
        external
        onlyRole(OPERATOR_ROLE)
    {
        if (meter == address(0) || owner == address(0)) revert MeterZeroAddress();
        if (ratedPowerW == 0) revert MeterZeroRatedPower();
        if (_meters[meter].owner != address(0)) revert MeterAlreadyRegistered(meter);
        uint8 flags = _FLAG_ACTIVE | (kind == MeterKind.Load ? _FLAG_LOAD : 0);
        _meters[meter] = Meter({
            owner: owner, cumulativeWh: 0, readAt: 0, ratedPowerW: ratedPowerW, flags: flags
        });
        emit MeterRegistered(meter, owner, kind, ratedPowerW);
    }

    /// @notice Deactivates `meter` for good: its readings are rejected from now on.
    /// Requirements: caller has OPERATOR_ROLE; meter registered and active.
    /// Emits {MeterDeactivated}.
    function deactivateMeter(address meter) external onlyRole(OPERATOR_ROLE) {
        Meter storage m = _meters[meter];
        if (m.owner == address(0)) revert MeterNotRegistered(meter);
        if (m.flags & _FLAG_ACTIVE == 0) revert MeterInactive(meter);
        m.flags &= ~_FLAG_ACTIVE;
        emit MeterDeactivated(meter, m.owner);
    }

    /// @notice Reports the meter's cumulative energy counter, sent from the meter's own key.
    /// The first reading sets the baseline. Each later one must be strictly greater and at most
    /// rated power x elapsed seconds above the last; a supply meter's increase mints tokens to the
    /// owner, a load meter's increase settles the owner's open trades in the market.
    /// Requirements: caller is a registered, active meter. Emits {ReadingRecorded}, and the token's
    /// {Transfer} (supply) or the market's delivery events (load).
    function report(uint256 cumulativeWh) external {
        Meter memory m = _meters[msg.sender];
        if (m.owner == address(0)) revert MeterNotRegistered(msg.sender);
        if (m.flags & _FLAG_ACTIVE == 0) revert MeterInactive(msg.sender);
        if (cumulativeWh > type(uint40).max) revert MeterReadingOutOfRange(cumulativeWh);

        uint256 deltaWh;
        if (m.readAt != 0) {
            if (cumulativeWh <= m.cumulativeWh) {
                revert MeterReadingNotNewer(m.cumulativeWh, cumulativeWh);
            }
            // Checked above: cumulativeWh > m.cumulativeWh, both below 2^40.
            unchecked {
                deltaWh = cumulativeWh - m.cumulativeWh;
            }
            uint256 elapsed = block.timestamp - m.readAt;
            uint256 maxWh = (uint256(m.ratedPowerW) * elapsed) / 3600;
            if (deltaWh > maxWh) revert MeterReadingImplausible(deltaWh, maxWh, elapsed);
        }

        // One SSTORE: the whole packed slot is written back at once.
        _meters[msg.sender] = Meter({
            owner: m.owner,
            cumulativeWh: uint40(cumulativeWh),
            readAt: uint32(block.timestamp),
            ratedPowerW: m.ratedPowerW,
            flags: m.flags
        });
        emit ReadingRecorded(msg.sender, cumulativeWh, deltaWh);

        if (deltaWh != 0) {
            if (m.flags & _FLAG_LOAD == 0) {
                _token.mint(m.owner, deltaWh);
            } else {
                _market.settleDelivery(m.owner, deltaWh);
            }
        }
    }

    /// @notice The token this registry mints.
    function token() external view returns (address) {
        return address(_token);
    }

    /// @notice The market that load readings settle.
    function market() external view returns (address) {
        return address(_market);
    }

    /// @notice Everything known about `meter` (owner is zero when unregistered).
    function meterOf(address meter) external view returns (MeterInfo memory info) {
        Meter memory m = _meters[meter];
        info = MeterInfo({
            owner: m.owner,
            kind: m.flags & _FLAG_LOAD == 0 ? MeterKind.Supply : MeterKind.Load,
            active: m.flags & _FLAG_ACTIVE != 0,
            ratedPowerW: m.ratedPowerW,
            cumulativeWh: m.cumulativeWh,
            readAt: m.readAt
        });
    }
}
