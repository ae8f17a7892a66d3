// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

interface IEnergyTokenMinter {
    function mint(address to, uint256 energyWh) external;
}

interface IDeliverySettlement {
    function settleDelivery(address buyer, uint256 energyWh) external returns (uint256 leftWh);
}

/// @title MeterRegistry
/// @notice The grid operator offers each DC meter (its device address, owner, kind and rated
/// power); the meter counts only after its owner accepts it. Every reading is a cumulative
/// counter signed by the meter itself (EIP-712 typed data bound to this chain and this registry)
/// with a sequence number that only grows, so anyone may carry it to the chain: the household's
/// server, a neighbour's, a gateway. The registry verifies the signature, refuses replays,
/// backward counters and jumps beyond rated power x elapsed chain time, then mints energy tokens
/// for supply meters or settles the owner's trades for load meters. An equal counter with a newer
/// sequence is a heartbeat: recorded, minting and settling nothing. Every reading also signs a
/// recent block (its number and hash), so it cannot have been signed before that block existed
/// and is refused once it is more than MAX_READING_AGE_BLOCKS blocks old: a carrier cannot
/// stockpile readings to send later.
contract MeterRegistry is AccessControl, EIP712 {
    /// @notice What a meter measures.
    enum MeterKind {
        Supply, // PV -> battery: every Wh mints a token unit to the owner
        Load // battery -> consumer: every Wh settles the owner's open trade
    }

    /// @notice Where a meter is in its life.
    enum MeterStatus {
        None, // never offered
        Offered, // offered by the operator, not yet accepted: its readings are refused
        Active, // accepted by its owner: its readings count
        Declined, // the owner refused the offer (the operator may offer it again)
        Deactivated // withdrawn by the operator for good
    }

    /// @notice A meter as reported by {meterOf}.
    struct MeterInfo {
        address owner;
        MeterKind kind;
        MeterStatus status;
        uint16 ratedPowerW;
        uint64 energyWh;
        uint64 sequence;
        uint32 readAt;
    }

    /// @dev One slot (64 + 64 + 32 + 16 + 16 + 8 + 8 = 208 bits) holds everything a reading
    /// checks and writes, so a reading costs one SLOAD and one SSTORE of it; the owner lives in
    /// its own mapping and is read only when a reading mints or settles. Bits, from the lowest:
    /// energyWh 0-63, sequence 64-127, readAt 128-159, ratedPowerW 160-175, carryWs 176-191,
    /// kind 192-199, status 200-207 (Solidity's packing order; {_record} reads and writes the
    /// slot as one word).
    struct Meter {
        uint64 energyWh; // last accepted cumulative counter
        uint64 sequence; // last accepted sequence number (0: none yet)
        uint32 readAt; // chain time of the last accepted reading (0 until the baseline)
        uint16 ratedPowerW;
        uint16 carryWs; // unused allowance below one Wh (watt-seconds, < 3600) from the last reading
        MeterKind kind;
        MeterStatus status;
    }

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    /// @notice EIP-712 type hash of a reading.
    bytes32 public constant READING_TYPEHASH =
        keccak256(
            "Reading(address meter,uint64 energyWh,uint64 sequence,uint64 blockNumber,bytes32 blockHash)"
        );
    /// @notice How many blocks old a reading's block may be when the reading is recorded: at
    /// most 32 blocks (32 s at 1-second blocks, 64 s at 2-second ones), far below the market's
    /// stall timeout, and far more than a carrier needs to have a reading mined.
    uint256 public constant MAX_READING_AGE_BLOCKS = 32;

    /// @dev Allowance left over after a reading is carried to the next one only below one Wh: the
    /// fraction per-reading rounding would otherwise lose, never a saved-up burst.
    uint256 private constant _MAX_CARRY_WS = 3599;
    /// @dev Why `_verify` refuses a reading (each maps to one custom error in `_error`).
    uint256 private constant _ACCEPTED = 0;
    uint256 private constant _NOT_ACTIVE = 1;
    uint256 private constant _OLD_SEQUENCE = 2;
    uint256 private constant _BAD_SIGNATURE = 3;
    uint256 private constant _BACKWARDS = 4;
    uint256 private constant _IMPLAUSIBLE = 5;
    uint256 private constant _BLOCK_NOT_RECENT = 6; // stale, or not mined yet
    /// @dev The bits of a Meter slot a reading leaves alone: ratedPowerW, kind and status.
    uint256 private constant _KEEP_ON_READING = (uint256(0xFFFF) << 160) | (uint256(0xFFFF) << 192);
    /// @dev Bytes of one item of {reportBatch}: meter 20, energyWh 8, sequence 8, blockNumber 8,
    /// r 32, s 32, v 1.
    uint256 private constant _ITEM_BYTES = 109;
    /// @dev Where an item's signature (r || s || v, as {report} takes it) starts inside the item.
    uint256 private constant _ITEM_SIGNATURE_AT = 44;

    IEnergyTokenMinter private immutable _token;
    IDeliverySettlement private immutable _market;
    /// @dev The domain separator and the chain id it was built for (OpenZeppelin's cache minus
    /// its `address(this)` check, which only a proxy or clone of the registry could fail: the
    /// registry is deployed plainly). On another chain id (a fork) it is rebuilt.
    bytes32 private immutable _separator;
    uint256 private immutable _separatorChainId;

    mapping(address meter => Meter) private _meters;
    mapping(address meter => address owner) private _owners;
    mapping(address owner => address meter) private _loadMeters;

    /// @notice The operator offered `meter` to `owner`; it counts once `owner` accepts it.
    event MeterOffered(
        address indexed meter, address indexed owner, MeterKind kind, uint16 ratedPowerW
    );
    /// @notice `owner` accepted `meter`: its readings count from now on.
    event MeterAccepted(address indexed meter, address indexed owner);
    /// @notice `owner` declined the offer of `meter`.
    event MeterDeclined(address indexed meter, address indexed owner);
    /// @notice The operator deactivated `meter` (or withdrew its offer); it can no longer report.
    event MeterDeactivated(address indexed meter, address indexed owner);
    /// @notice A signed reading was accepted. `deltaWh` is 0 for the baseline and for heartbeats.
    event ReadingRecorded(
        address indexed meter, uint256 energyWh, uint256 sequence, uint256 deltaWh
    );
    /// @notice A reading inside a batch was refused and skipped; `reason` is the selector of the
    /// custom error {report} reverts with for it.
    event ReadingRejected(address indexed meter, uint256 sequence, bytes4 reason);

    /// @notice The meter address or the owner address is zero.
    error MeterZeroAddress();
    /// @notice The rated power is zero.
    error MeterZeroRatedPower();
    /// @notice The meter was offered, accepted or deactivated before (only a declined offer may be
    /// repeated).
    error MeterAlreadyRegistered(address meter, MeterStatus status);
    /// @notice No meter was ever offered at this address.
    error MeterNotRegistered(address meter);
    /// @notice The meter is offered but its owner has not accepted it.
    error MeterNotAccepted(address meter);
    /// @notice The meter is not offered (accept/decline), or declined or deactivated (reports).
    error MeterInactive(address meter, MeterStatus status);
    /// @notice Only the owner the meter was offered to may accept or decline it.
    error MeterNotOwner(address meter, address caller);
    /// @notice The owner already has an active load meter; only one may settle its trades.
    error MeterLoadMeterExists(address owner, address loadMeter);
    /// @notice The signature was not made by `meter`'s key for this chain and registry.
    error MeterSignatureInvalid(address meter, address signer);
    /// @notice The sequence number is not greater than the last accepted one (replay).
    error MeterSequenceNotNewer(uint256 lastSequence, uint256 sequence);
    /// @notice The counter is below the last accepted one.
    error MeterReadingBackwards(uint256 lastWh, uint256 reportedWh);
    /// @notice The increase implies more power than the meter's rating over the elapsed time.
    error MeterReadingImplausible(uint256 deltaWh, uint256 maxWh, uint256 elapsedSeconds);
    /// @notice The reading's block is more than MAX_READING_AGE_BLOCKS blocks old: the oldest
    /// block a reading may sign now is `oldestAccepted`.
    error MeterReadingStale(uint256 blockNumber, uint256 oldestAccepted);
    /// @notice The reading's block is this block or a later one, whose hash nobody knows yet.
    error MeterReadingBlockUnknown(uint256 blockNumber, uint256 currentBlock);
    /// @notice A packed batch's length is not a whole number of 109-byte items (see {reportBatch}).
    error MeterBatchMalformed(uint256 length);

    constructor(address operator, address token_, address market_) EIP712("MeterRegistry", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, operator);
        _grantRole(OPERATOR_ROLE, operator);
        _token = IEnergyTokenMinter(token_);
        _market = IDeliverySettlement(market_);
        _separator = _domainSeparatorV4();
        _separatorChainId = block.chainid;
    }

    /// @notice Offers `meter` (the address of the meter's own key) to `owner`.
    /// Requirements: caller has OPERATOR_ROLE; addresses non-zero; rating non-zero; `meter` never
    /// offered before, or its last offer declined. Emits {MeterOffered}.
    function offerMeter(address meter, address owner, MeterKind kind, uint16 ratedPowerW)
        external
        onlyRole(OPERATOR_ROLE)
    {
        if (meter == address(0) || owner == address(0)) revert MeterZeroAddress();
        if (ratedPowerW == 0) revert MeterZeroRatedPower();
        Meter storage m = _meters[meter];
        MeterStatus status = m.status;
        if (status != MeterStatus.None && status != MeterStatus.Declined) {
            revert MeterAlreadyRegistered(meter, status);
        }
        // A declined meter never reported, so its counter fields are still zero.
        m.ratedPowerW = ratedPowerW;
        m.kind = kind;
        m.status = MeterStatus.Offered;
        _owners[meter] = owner;
        emit MeterOffered(meter, owner, kind, ratedPowerW);
    }

    /// @notice Accepts the offer of `meter`: its readings count for the caller from now on.
    /// Requirements: `meter` is Offered to the caller; for a load meter, the caller has no other
    /// active load meter. Emits {MeterAccepted}.
    function acceptMeter(address meter) external {
        Meter storage m = _offeredToCaller(meter);
        if (m.kind == MeterKind.Load) {
            address current = _loadMeters[msg.sender];
            if (current != address(0)) revert MeterLoadMeterExists(msg.sender, current);
            _loadMeters[msg.sender] = meter;
        }
        m.status = MeterStatus.Active;
        emit MeterAccepted(meter, msg.sender);
    }

    /// @notice Declines the offer of `meter`.
    /// Requirements: `meter` is Offered to the caller. Emits {MeterDeclined}.
    function declineMeter(address meter) external {
        Meter storage m = _offeredToCaller(meter);
        m.status = MeterStatus.Declined;
        emit MeterDeclined(meter, msg.sender);
    }

    /// @notice Deactivates `meter` for good (or withdraws its offer): its readings are refused
    /// from now on and, for a load meter, its owner may accept another one.
    /// Requirements: caller has OPERATOR_ROLE; meter Offered or Active. Emits {MeterDeactivated}.
    function deactivateMeter(address meter) external onlyRole(OPERATOR_ROLE) {
        Meter storage m = _meters[meter];
        MeterStatus status = m.status;
        if (status == MeterStatus.None) revert MeterNotRegistered(meter);
        if (status != MeterStatus.Offered && status != MeterStatus.Active) {
            revert MeterInactive(meter, status);
        }
        address owner = _owners[meter];
        if (status == MeterStatus.Active && m.kind == MeterKind.Load) delete _loadMeters[owner];
        m.status = MeterStatus.Deactivated;
        emit MeterDeactivated(meter, owner);
    }

    /// @notice Records one reading signed by `meter`; anyone may send it. The first accepted
    /// reading is the baseline. Each later one must carry a greater sequence number and a counter
    /// no lower than the last and at most rated power x elapsed chain time above it (plus the
    /// fraction of a Wh the last reading left unused). A supply meter's increase mints tokens to
    /// its owner; a load meter's increase settles its owner's trades; an equal counter is a
    /// heartbeat.
    /// The meter signed block `blockNumber`'s hash along with the counter: the digest is built
    /// with this chain's `blockhash(blockNumber)`, so a reading signed with any other hash
    /// recovers another signer ({MeterSignatureInvalid}). `blockNumber` must be an earlier block
    /// ({MeterReadingBlockUnknown}) at most MAX_READING_AGE_BLOCKS old ({MeterReadingStale}).
    /// Requirements: `signature` is `meter`'s EIP-712 signature of the reading for this chain
    /// and registry; the meter is Active. Emits {ReadingRecorded}, and the token's {Transfer}
    /// (supply, when the counter grew) or the market's delivery events (load).
    function report(
        address meter,
        uint64 energyWh,
        uint64 sequence,
        uint64 blockNumber,
        bytes calldata signature
    ) external {
        uint256 signatureAt;
        // A signature of any length but 65 is read from the end of the calldata instead, where
        // every byte is zero: r = s = v = 0 recovers no signer, so the reading is refused with
        // MeterSignatureInvalid(meter, 0), as a malformed signature always was.
        assembly ("memory-safe") {
            signatureAt := signature.offset
            if iszero(eq(signature.length, 65)) { signatureAt := calldatasize() }
        }
        _record(meter, energyWh, sequence, blockNumber, signatureAt, true);
    }

    /// @notice Records many signed readings (of one or many meters) in one transaction; anyone
    /// may send it. A reading {report} would refuse is skipped with {ReadingRejected}; the others
    /// are recorded in order, exactly as {report} records them.
    /// `packed` is the readings back to back, 109 bytes each, big-endian, with no padding:
    /// `meter` (20 bytes) | `energyWh` (8) | `sequence` (8) | `blockNumber` (8) | `r` (32) |
    /// `s` (32) | `v` (1), the last three being the meter's 65-byte signature exactly as {report}
    /// takes it (the block hash is not carried: the registry takes it from `blockhash`, as
    /// {report} does). (A packed layout, not an array of structs: ABI-decoding a struct array
    /// with a `bytes` member cost ~1,900 gas more per reading.)
    /// Requirements: `packed.length` is a multiple of 109 (else {MeterBatchMalformed}; an
    /// empty batch records nothing). Emits, per reading, what {report} emits, or
    /// {ReadingRejected}.
    function reportBatch(bytes calldata packed) external {
        uint256 length = packed.length;
        if (length % _ITEM_BYTES != 0) revert MeterBatchMalformed(length);
        uint256 item;
        uint256 end;
        assembly ("memory-safe") {
            item := packed.offset
            end := add(item, length) // the ABI decoder checked offset + length <= calldatasize
        }
        while (item < end) {
            address meter;
            uint64 energyWh;
            uint64 sequence;
            uint64 blockNumber;
            uint256 signatureAt;
            // Fixed-width big-endian fields of one whole item (the length check above means
            // [item, item + 109) lies inside `packed`): the meter is the first 20 bytes of the
            // first word, energyWh the next 8, then sequence and blockNumber the first 16 of
            // the word at byte 28, then the signature (item + 44 < calldatasize: no overflow).
            assembly ("memory-safe") {
                let head := calldataload(item)
                meter := shr(96, head)
                energyWh := and(shr(32, head), 0xffffffffffffffff)
                let tail := calldataload(add(item, 28))
                sequence := shr(192, tail)
                blockNumber := and(shr(128, tail), 0xffffffffffffffff)
                signatureAt := add(item, _ITEM_SIGNATURE_AT)
            }
            _record(meter, energyWh, sequence, blockNumber, signatureAt, false);
            // item + 109 <= end <= calldatasize, far below 2^256.
            unchecked {
                item += _ITEM_BYTES;
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

    /// @notice Everything known about `meter` (status None and owner zero when never offered).
    function meterOf(address meter) external view returns (MeterInfo memory info) {
        Meter storage m = _meters[meter];
        info = MeterInfo({
            owner: _owners[meter],
            kind: m.kind,
            status: m.status,
            ratedPowerW: m.ratedPowerW,
            energyWh: m.energyWh,
            sequence: m.sequence,
            readAt: m.readAt
        });
    }

    /// @notice The active load meter of `owner` (zero when none): the only meter that settles
    /// `owner`'s trades.
    function loadMeterOf(address owner) external view returns (address) {
        return _loadMeters[owner];
    }

    /// @notice The last accepted reading time (0: none yet) and the rating of `owner`'s active
    /// load meter (both 0 when it has none): what the market's stall rule needs.
    function lastLoadReadingOf(address owner)
        external
        view
        returns (uint256 readAt, uint256 ratedPowerW)
    {
        address meter = _loadMeters[owner];
        if (meter == address(0)) return (0, 0);
        Meter storage m = _meters[meter];
        return (m.readAt, m.ratedPowerW);
    }

    /// @notice The EIP-712 digest `meter` signs for this reading on this chain and registry,
    /// with `blockHash` as the hash of block `blockNumber` (any values: nothing is checked).
    function readingDigest(
        address meter,
        uint64 energyWh,
        uint64 sequence,
        uint64 blockNumber,
        bytes32 blockHash
    ) external view returns (bytes32) {
        return _digest(meter, energyWh, sequence, blockNumber, blockHash);
    }

    /// @dev Verifies and applies one reading. With `strict`, a refused reading reverts with its
    /// custom error; otherwise it emits {ReadingRejected} and returns false.
    function _record(
        address meter,
        uint64 energyWh,
        uint64 sequence,
        uint64 blockNumber,
        uint256 signatureAt,
        bool strict
    ) private returns (bool) {
        Meter storage slot = _meters[meter];
        uint256 word;
        // The whole packed slot in one SLOAD (Solidity's own layout of Meter: see there).
        assembly ("memory-safe") {
            word := sload(slot.slot)
        }
        (uint256 failure, uint256 deltaWh, uint256 carry) =
            _verify(word, meter, energyWh, sequence, blockNumber, signatureAt);
        if (failure != _ACCEPTED) {
            bytes memory err =
                _error(failure, word, meter, energyWh, sequence, blockNumber, signatureAt);
            return _refuse(strict, meter, sequence, err);
        }
        _apply(slot, meter, word, energyWh, sequence, deltaWh, carry);
        return true;
    }

    /// @dev Stores an accepted reading, emits {ReadingRecorded}, then mints or settles.
    function _apply(
        Meter storage slot,
        address meter,
        uint256 word,
        uint64 energyWh,
        uint64 sequence,
        uint256 deltaWh,
        uint256 carry
    ) private {
        // One SSTORE: rating, kind and status kept, the reading's fields replaced.
        uint256 updated = (word & _KEEP_ON_READING) | energyWh | (uint256(sequence) << 64)
            | (block.timestamp << 128) | (carry << 176);
        bytes32 recorded = ReadingRecorded.selector;
        // emit ReadingRecorded(meter, energyWh, sequence, deltaWh), its three words written
        // past the free memory pointer (left where it is) instead of through the ABI encoder.
        assembly ("memory-safe") {
            sstore(slot.slot, updated)
            let ptr := mload(0x40)
            mstore(ptr, and(energyWh, 0xffffffffffffffff))
            mstore(add(ptr, 0x20), and(sequence, 0xffffffffffffffff))
            mstore(add(ptr, 0x40), deltaWh)
            log2(ptr, 0x60, recorded, and(meter, 0xffffffffffffffffffffffffffffffffffffffff))
        }

        // The stored kind is always a valid MeterKind: compared as a byte, without the range
        // check a conversion to the enum would add.
        if (uint8(word >> 192) == uint8(MeterKind.Supply)) {
            if (deltaWh != 0) _mint(_owners[meter], deltaWh);
        } else {
            // An Active load meter is its owner's only load meter (see {acceptMeter}). Every
            // reading, heartbeats too, goes to the market: it may end a requested close.
            _market.settleDelivery(_owners[meter], deltaWh);
        }
    }

    /// @dev `_token.mint(to, energyWh)`, minus the code-size check and ABI helpers Solidity wraps
    /// around a call with no return value (~150 gas a minting reading).
    function _mint(address to, uint256 energyWh) private {
        address token_ = address(_token);
        bytes4 selector = IEnergyTokenMinter.mint.selector;
        // The calldata is built past the free memory pointer, which stays where it is (the
        // bytes are garbage once the call returns). No code-size check is needed: `_token` is
        // immutable, and the deployment creates the token at exactly that predicted address and
        // checks that it landed there (dapp/chain/deploy.py). A revert is bubbled up.
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, selector)
            mstore(add(ptr, 4), to)
            mstore(add(ptr, 36), energyWh)
            if iszero(call(gas(), token_, 0, ptr, 68, 0, 0)) {
                returndatacopy(ptr, 0, returndatasize())
                revert(ptr, returndatasize())
            }
        }
    }

    /// @dev Every check of one reading against the meter's packed slot `word`, on the cheap
    /// path: why it fails (_ACCEPTED when it does not), the increase and the allowance to carry.
    function _verify(
        uint256 word,
        address meter,
        uint64 energyWh,
        uint64 sequence,
        uint64 blockNumber,
        uint256 signatureAt
    ) private view returns (uint256 failure, uint256 deltaWh, uint256 carry) {
        if (uint8(word >> 200) != uint8(MeterStatus.Active)) return (_NOT_ACTIVE, 0, 0);
        if (sequence <= uint64(word >> 64)) return (_OLD_SEQUENCE, 0, 0);
        // Recent means 1 <= block.number - blockNumber <= MAX_READING_AGE_BLOCKS; a block not
        // mined yet (age 0, or "negative" and wrapped around) fails the same one comparison.
        unchecked {
            if (block.number - blockNumber - 1 >= MAX_READING_AGE_BLOCKS) {
                return (_BLOCK_NOT_RECENT, 0, 0);
            }
        }
        bytes32 digest = _digest(meter, energyWh, sequence, blockNumber, blockhash(blockNumber));
        if (_signer(digest, signatureAt) != meter) {
            return (_BAD_SIGNATURE, 0, 0);
        }
        uint256 readAt = uint32(word >> 128);
        if (readAt == 0) return (_ACCEPTED, 0, 0); // the baseline: any counter, nothing measured
        uint256 lastWh = uint64(word);
        if (energyWh < lastWh) return (_BACKWARDS, 0, 0);
        uint256 allowanceWs = _allowanceWs(word);
        // energyWh >= lastWh (checked above); deltaWh < 2^64, so deltaWh * 3600 < 2^76; and
        // the subtraction runs only when deltaWh * 3600 <= allowanceWs.
        unchecked {
            deltaWh = energyWh - lastWh;
            uint256 usedWs = deltaWh * 3600;
            if (usedWs > allowanceWs) return (_IMPLAUSIBLE, 0, 0);
            carry = allowanceWs - usedWs;
        }
        if (carry > _MAX_CARRY_WS) carry = _MAX_CARRY_WS;
    }

    /// @dev The custom error (selector and arguments) for a reading `_verify` refused.
    function _error(
        uint256 failure,
        uint256 word,
        address meter,
        uint64 energyWh,
        uint64 sequence,
        uint64 blockNumber,
        uint256 signatureAt
    ) private view returns (bytes memory) {
        if (failure == _NOT_ACTIVE) {
            MeterStatus status = MeterStatus(uint8(word >> 200));
            if (status == MeterStatus.None) {
                return abi.encodeWithSelector(MeterNotRegistered.selector, meter);
            }
            if (status == MeterStatus.Offered) {
                return abi.encodeWithSelector(MeterNotAccepted.selector, meter);
            }
            return abi.encodeWithSelector(MeterInactive.selector, meter, status);
        }
        if (failure == _OLD_SEQUENCE) {
            return abi.encodeWithSelector(
                MeterSequenceNotNewer.selector, uint64(word >> 64), sequence
            );
        }
        if (failure == _BLOCK_NOT_RECENT) {
            if (blockNumber >= block.number) {
                return abi.encodeWithSelector(
                    MeterReadingBlockUnknown.selector, blockNumber, block.number
                );
            }
            return abi.encodeWithSelector(
                MeterReadingStale.selector, blockNumber, block.number - MAX_READING_AGE_BLOCKS
            );
        }
        if (failure == _BAD_SIGNATURE) {
            bytes32 digest =
                _digest(meter, energyWh, sequence, blockNumber, blockhash(blockNumber));
            address signer = _signer(digest, signatureAt);
            return abi.encodeWithSelector(MeterSignatureInvalid.selector, meter, signer);
        }
        if (failure == _BACKWARDS) {
            return abi.encodeWithSelector(MeterReadingBackwards.selector, uint64(word), energyWh);
        }
        uint256 elapsed = block.timestamp - uint32(word >> 128);
        return abi.encodeWithSelector(
            MeterReadingImplausible.selector,
            energyWh - uint64(word),
            _allowanceWs(word) / 3600,
            elapsed
        );
    }

    /// @dev Watt-seconds the meter may have measured since its last reading: its rating over
    /// the elapsed chain time plus the fraction of a Wh the last reading left unused.
    function _allowanceWs(uint256 word) private view returns (uint256 allowanceWs) {
        // readAt is the time of an earlier block, so elapsed <= block.timestamp < 2^64 (a 64-bit
        // field in every client); rating and carry are below 2^16: the result is below 2^81.
        unchecked {
            uint256 elapsed = block.timestamp - uint32(word >> 128);
            allowanceWs = uint256(uint16(word >> 160)) * elapsed + uint16(word >> 176);
        }
    }

    /// @dev Reverts with `err` (strict) or emits {ReadingRejected} with its selector; false.
    function _refuse(bool strict, address meter, uint64 sequence, bytes memory err)
        private
        returns (bool)
    {
        if (strict) {
            assembly ("memory-safe") {
                revert(add(err, 32), mload(err))
            }
        }
        emit ReadingRejected(meter, sequence, bytes4(err));
        return false;
    }

    /// @dev The meter that `owner` was offered, checked for {acceptMeter} and {declineMeter}.
    function _offeredToCaller(address meter) private view returns (Meter storage m) {
        m = _meters[meter];
        MeterStatus status = m.status;
        if (status == MeterStatus.None) revert MeterNotRegistered(meter);
        if (status != MeterStatus.Offered) revert MeterInactive(meter, status);
        if (_owners[meter] != msg.sender) revert MeterNotOwner(meter, msg.sender);
    }

    /// @dev The EIP-712 digest of a reading: keccak256("\x19\x01" || domain separator ||
    /// keccak256(abi.encode(READING_TYPEHASH, meter, energyWh, sequence, blockNumber,
    /// blockHash))).
    function _digest(
        address meter,
        uint64 energyWh,
        uint64 sequence,
        uint64 blockNumber,
        bytes32 blockHash
    ) private view returns (bytes32 digest) {
        bytes32 separator =
            block.chainid == _separatorChainId ? _separator : _domainSeparatorV4();
        bytes32 typeHash = READING_TYPEHASH;
        // What abi.encode and MessageHashUtils.toTypedDataHash do, hashed in place past the free
        // memory pointer (left where it is) instead of in a fresh allocation per reading. The
        // masks clean the bits above each type (inline assembly may not assume them zero).
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            mstore(add(ptr, 0x20), and(meter, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(ptr, 0x40), and(energyWh, 0xffffffffffffffff))
            mstore(add(ptr, 0x60), and(sequence, 0xffffffffffffffff))
            mstore(add(ptr, 0x80), and(blockNumber, 0xffffffffffffffff))
            mstore(add(ptr, 0xa0), blockHash)
            let structHash := keccak256(ptr, 0xc0)
            mstore(ptr, shl(240, 0x1901))
            mstore(add(ptr, 0x02), separator)
            mstore(add(ptr, 0x22), structHash)
            digest := keccak256(ptr, 0x42)
        }
    }

    /// @dev The signer of the 65-byte r || s || v signature at calldata offset `signatureAt`, or
    /// zero when it is malformed: what OpenZeppelin's `ECDSA.tryRecover(digest, v, r, s)` returns
    /// (a high s is refused, so no second signature of a reading exists), without copying the
    /// four words through Solidity's ABI encoder (~250 gas a reading).
    function _signer(bytes32 digest, uint256 signatureAt) private view returns (address signer) {
        // Plain reads of calldata (past its end they read zeros, which recover no signer). The
        // precompile's input is written past the free memory pointer (left where it is); it
        // writes its output only when it recovers a signer, so scratch word 0 is cleared first,
        // and a failed call (out of gas) leaves it zero too.
        assembly ("memory-safe") {
            let s := calldataload(add(signatureAt, 0x20))
            if iszero(gt(s, 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0)) {
                let ptr := mload(0x40)
                mstore(ptr, digest)
                mstore(add(ptr, 0x20), byte(0, calldataload(add(signatureAt, 0x40))))
                mstore(add(ptr, 0x40), calldataload(signatureAt))
                mstore(add(ptr, 0x60), s)
                mstore(0x00, 0)
                pop(staticcall(gas(), 0x01, ptr, 0x80, 0x00, 0x20))
                signer := mload(0x00)
            }
        }
    }
}
