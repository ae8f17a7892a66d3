// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

interface IEnergyTokenEscrow is IERC20 {
    function escrowFrom(address seller, uint256 energyWh) external;
    function burnDelivered(uint256 energyWh) external;
}

interface IMeterRegistryView {
    function loadMeterOf(address owner) external view returns (address);
    function lastLoadReadingOf(address owner)
        external
        view
        returns (uint256 readAt, uint256 ratedPowerW);
}

/// @title EnergyMarket
/// @notice English auctions of energy tokens with an Ether escrow that pays the seller per Wh the
/// buyer's load meter measures.
///
/// A lot goes Listed -> (finalize) Open -> Closed, or Listed -> (finalize, no bids) Expired. Its id
/// is both the listing id and, once open, the trade id. Money moves by pull only: outbid deposits,
/// refunds and seller earnings are credited and leave the contract through {withdraw}.
///
/// Work per reading is bounded: {settleDelivery} walks at most MAX_TRADES_PER_READING of the
/// buyer's open trades (oldest first, a linked list per buyer); it stops at the first trade the
/// reading does not complete, so only completed trades cost more than one step. What a reading
/// cannot walk is carried over to the buyer's next reading, never dropped.
///
/// Exposure is bounded (README, "The market"): only the buyer's oldest open trade is delivering
/// ({activeTradeOf}); a trade whose buyer's load meter has been silent for `stallTimeout` is
/// stalled and its seller may close it, charging the most the meter could have drawn while
/// silent; every trade costs its winner at least `minChargeWh`; the buyer closes in two phases
/// (relays open at once, the next reading settles the tail).
contract EnergyMarket is ReentrancyGuard {
    /// @notice Lifecycle of a lot.
    enum Status {
        None,
        Listed,
        Open,
        Closed,
        Expired
    }

    /// @notice A lot as reported by {lotOf}.
    struct LotInfo {
        Status status;
        address seller;
        address buyer; // the highest bidder while listed
        uint256 energyWh;
        uint256 pricePerKWh; // start price until the first bid, then the highest bid
        uint256 deadline;
        uint256 deliveredWh;
        uint256 activeSince; // when it opened, or became the buyer's active trade if later
        uint256 depositWei; // escrowed by the buyer (0 while nobody has bid)
        uint256 paidWei; // already credited to the seller for delivered energy
        uint256 closeRequestedAt; // when the buyer asked to close (0: not asked)
    }

    /// @dev Three slots. A delivery reads and writes slot 0 and reads slot 1 (seller and the
    /// close request). Slot 0: 8 + 48 + 40 + 96 + 48 = 240 bits; slot 1: 160 + 32 + 32 + 32 =
    /// 256; slot 2: 160 + 48 + 48 = 256.
    struct Lot {
        Status status;
        uint48 deliveredWh;
        uint40 activeSince; // when it opened, or became the buyer's active trade if later
        uint96 pricePerKWh;
        uint48 energyWh;
        address seller;
        uint32 deadline;
        uint32 closeRequestedAt; // 0 unless the buyer asked to close (two-phase close)
        uint32 sellerSlot; // 1 + its index in the seller's active lots (0: not there)
        address buyer;
        uint48 prevOfBuyer;
        uint48 nextOfBuyer;
    }

    /// @dev A buyer's open trades, oldest first, and the energy a reading could not walk yet.
    /// One slot: 48 + 48 + 64 bits.
    struct Queue {
        uint48 head;
        uint48 tail;
        uint64 carryWh;
    }

    /// @notice At most this many of a buyer's trades are settled by one reading.
    uint256 public constant MAX_TRADES_PER_READING = 4;

    IEnergyTokenEscrow private immutable _token;
    address private immutable _registry;
    uint256 private immutable _minDuration;
    uint256 private immutable _maxDuration;
    uint256 private immutable _minIncrementPerKWh;
    uint256 private immutable _stallTimeout;
    uint256 private immutable _closeGrace;
    uint256 private immutable _minChargeWh;

    uint256 private _lotCount;
    mapping(uint256 id => Lot) private _lots;
    mapping(address buyer => Queue) private _queues;
    mapping(address account => uint256) private _credits;
    mapping(address seller => uint256[]) private _lotsOfSeller; // Listed and Open, any order

    /// @notice The market was deployed, wired to `token` and `registry`. Servers joining a chain
    /// find the deployment by this event alone (a log query with no address filter).
    event MarketDeployed(address indexed token, address indexed registry);
    /// @notice A seller put `energyWh` up for auction; the tokens are in escrow.
    event Listed(
        uint256 indexed listingId,
        address indexed seller,
        uint256 energyWh,
        uint256 startPricePerKWh,
        uint256 deadline
    );
    /// @notice `bidder` became the highest bidder and escrowed `depositWei`.
    event BidPlaced(
        uint256 indexed listingId, address indexed bidder, uint256 pricePerKWh, uint256 depositWei
    );
    /// @notice `amountWei` became withdrawable for `account` (outbid deposit or unspent refund).
    event Credited(address indexed account, uint256 indexed lotId, uint256 amountWei);
    /// @notice The auction ended without bids; the tokens went back to the seller.
    event ListingExpired(uint256 indexed listingId, address indexed seller, uint256 energyWh);
    /// @notice The auction ended; the trade is open and the relays may close.
    event TradeOpened(
        uint256 indexed tradeId,
        address indexed seller,
        address indexed buyer,
        uint256 energyWh,
        uint256 pricePerKWh
    );
    /// @notice `energyWh` was delivered and `paidWei` moved from escrow to the seller's credit;
    /// `deliveredWh` is the trade's total so far.
    event DeliverySettled(
        uint256 indexed tradeId, uint256 energyWh, uint256 paidWei, uint256 deliveredWh
    );
    /// @notice The trade closed (by `closedBy`, or by the market itself when the lot was delivered):
    /// `refundWei` was credited to the buyer, `returnedWh` tokens went back to the seller.
    event ConnectionClosed(
        uint256 indexed tradeId,
        address indexed closedBy,
        uint256 deliveredWh,
        uint256 refundWei,
        uint256 returnedWh
    );
    /// @notice The buyer asked to close trade `tradeId`: the relays open now; the buyer's next
    /// load reading (or, after the close grace, the stall rule) settles the tail, then it closes.
    event CloseRequested(uint256 indexed tradeId, address indexed buyer, uint256 settlesBy);
    /// @notice `tradeId` closed while stalled or unfinished: `energyWh` (the most the buyer's
    /// meter could have drawn while silent, capped at the lot) was charged as delivered.
    event StallCharged(
        uint256 indexed tradeId, uint256 silentSince, uint256 silentUntil, uint256 energyWh
    );
    /// @notice `account` withdrew `amountWei` of its credit.
    event Withdrawn(address indexed account, uint256 amountWei);

    /// @notice The lot size is zero or above 2^48-1 Wh.
    error MarketEnergyOutOfRange(uint256 energyWh);
    /// @notice The price is zero or above 2^96-1 wei per kWh.
    error MarketPriceOutOfRange(uint256 pricePerKWh);
    /// @notice The duration is outside [minDuration, maxDuration].
    error MarketDurationOutOfRange(uint256 duration, uint256 minDuration, uint256 maxDuration);
    /// @notice The lot is not in the Listed state (unknown, finalized or expired).
    error MarketListingNotOpen(uint256 listingId);
    /// @notice The auction's deadline has passed; no more bids.
    error MarketAuctionEnded(uint256 listingId, uint256 deadline);
    /// @notice The auction's deadline has not passed yet.
    error MarketAuctionNotEnded(uint256 listingId, uint256 deadline);
    /// @notice Sellers cannot bid on their own lots.
    error MarketSellerCannotBid(uint256 listingId);
    /// @notice The bid is below the start price or does not beat the highest bid by the increment.
    error MarketBidTooLow(uint256 minimumPricePerKWh, uint256 offeredPricePerKWh);
    /// @notice The Ether sent is not the deposit the lot needs at that price.
    error MarketDepositMismatch(uint256 requiredWei, uint256 sentWei);
    /// @notice The trade is not open.
    error MarketTradeNotOpen(uint256 tradeId);
    /// @notice Only the buyer and the seller of a trade may close it.
    error MarketNotTradeParty(uint256 tradeId, address caller);
    /// @notice The seller may close only once the trade is stalled (the buyer's load meter
    /// silent for the stall timeout) or the buyer's close request is past its grace time.
    error MarketTradeNotStalled(uint256 tradeId, uint256 stallsAt);
    /// @notice The buyer already asked to close; the next reading, or the grace time, ends it.
    error MarketCloseAlreadyRequested(uint256 tradeId, uint256 graceEndsAt);
    /// @notice Only accounts with an accepted, active load meter may bid.
    error MarketBidderHasNoLoadMeter(address bidder);
    /// @notice Only the meter registry reports deliveries.
    error MarketCallerNotRegistry(address caller);
    /// @notice The caller has no credit to withdraw.
    error MarketNothingToWithdraw(address account);
    /// @notice Sending the credit failed; it stays credited.
    error MarketWithdrawalFailed(address account, uint256 amountWei);
    /// @notice Invalid deployment parameters.
    error MarketInvalidParameters();

    constructor(
        address token_,
        address registry_,
        uint256 minDuration_,
        uint256 maxDuration_,
        uint256 minIncrementPerKWh_,
        uint256 stallTimeout_,
        uint256 closeGrace_,
        uint256 minChargeWh_
    ) {
        if (
            minDuration_ == 0 || maxDuration_ < minDuration_ || maxDuration_ > type(uint32).max
                || stallTimeout_ == 0 || closeGrace_ == 0
        ) {
            revert MarketInvalidParameters();
        }
        _token = IEnergyTokenEscrow(token_);
        _registry = registry_;
        _minDuration = minDuration_;
        _maxDuration = maxDuration_;
        _minIncrementPerKWh = minIncrementPerKWh_;
        _stallTimeout = stallTimeout_;
        _closeGrace = closeGrace_;
        _minChargeWh = minChargeWh_;
        emit MarketDeployed(token_, registry_);
    }

    /// @notice Puts `energyWh` of the caller's tokens up for auction, starting at
    /// `startPricePerKWh` wei per kWh, for `duration` seconds. The tokens move into escrow in the
    /// same transaction (no allowance needed).
    /// Requirements: 0 < energyWh < 2^48; 0 < startPricePerKWh < 2^96; duration within the
    /// deployment's bounds; the caller holds the tokens. Emits {Listed} and the token's {Transfer}.
    function list(uint256 energyWh, uint256 startPricePerKWh, uint256 duration)
        external
        returns (uint256 listingId)
    {
        if (energyWh == 0 || energyWh > type(uint48).max) revert MarketEnergyOutOfRange(energyWh);
        if (startPricePerKWh == 0 || startPricePerKWh > type(uint96).max) {
            revert MarketPriceOutOfRange(startPricePerKWh);
        }
        if (duration < _minDuration || duration > _maxDuration) {
            revert MarketDurationOutOfRange(duration, _minDuration, _maxDuration);
        }
        listingId = ++_lotCount;
        uint256 deadline = block.timestamp + duration;
        Lot storage lot = _lots[listingId];
        lot.seller = msg.sender;
        lot.deadline = uint32(deadline);
        lot.pricePerKWh = uint96(startPricePerKWh);
        lot.energyWh = uint48(energyWh);
        lot.status = Status.Listed;
        uint256[] storage own = _lotsOfSeller[msg.sender];
        own.push(listingId);
        lot.sellerSlot = uint32(own.length);
        emit Listed(listingId, msg.sender, energyWh, startPricePerKWh, deadline);
        _token.escrowFrom(msg.sender, energyWh);
    }

    /// @notice Bids `pricePerKWh` on a listing, escrowing the whole lot's price as `msg.value`
    /// (see {depositFor}). The previous highest bidder's deposit becomes their credit.
    /// Requirements: listing Listed and before its deadline; caller is not the seller; price at
    /// least the start price (first bid) or the highest bid plus the minimum increment; msg.value
    /// equals the deposit; the caller has an accepted, active load meter (the only thing that
    /// can settle the trade). Emits {BidPlaced}, and {Credited} for the outbid bidder.
    function bid(uint256 listingId, uint256 pricePerKWh) external payable {
        Lot storage lot = _lots[listingId];
        if (lot.status != Status.Listed) revert MarketListingNotOpen(listingId);
        if (block.timestamp >= lot.deadline) revert MarketAuctionEnded(listingId, lot.deadline);
        if (msg.sender == lot.seller) revert MarketSellerCannotBid(listingId);
        if (pricePerKWh > type(uint96).max) revert MarketPriceOutOfRange(pricePerKWh);
        if (IMeterRegistryView(_registry).loadMeterOf(msg.sender) == address(0)) {
            revert MarketBidderHasNoLoadMeter(msg.sender);
        }

        address previousBidder = lot.buyer;
        uint256 previousPrice = lot.pricePerKWh;
        uint256 minimum =
            previousBidder == address(0) ? previousPrice : previousPrice + _minIncrementPerKWh;
        if (pricePerKWh < minimum) revert MarketBidTooLow(minimum, pricePerKWh);
        uint256 energyWh = lot.energyWh;
        uint256 deposit = _deposit(energyWh, pricePerKWh);
        if (msg.value != deposit) revert MarketDepositMismatch(deposit, msg.value);

        lot.buyer = msg.sender;
        lot.pricePerKWh = uint96(pricePerKWh);
        emit BidPlaced(listingId, msg.sender, pricePerKWh, deposit);
        if (previousBidder != address(0)) {
            uint256 refund = _deposit(energyWh, previousPrice);
            _credits[previousBidder] += refund;
            emit Credited(previousBidder, listingId, refund);
        }
    }

    /// @notice Ends an auction after its deadline; anyone may call it. Without bids the tokens go
    /// back to the seller; otherwise a trade opens between the seller and the highest bidder.
    /// Requirements: listing Listed and its deadline passed.
    /// Emits {TradeOpened}, or {ListingExpired} and the token's {Transfer}.
    function finalize(uint256 listingId) external {
        Lot storage lot = _lots[listingId];
        if (lot.status != Status.Listed) revert MarketListingNotOpen(listingId);
        if (block.timestamp < lot.deadline) revert MarketAuctionNotEnded(listingId, lot.deadline);

        address seller = lot.seller;
        address buyer = lot.buyer;
        uint256 energyWh = lot.energyWh;
        if (buyer == address(0)) {
            lot.status = Status.Expired;
            _removeFromSeller(seller, lot);
            emit ListingExpired(listingId, seller, energyWh);
            _transferTokens(seller, energyWh);
            return;
        }
        lot.status = Status.Open;
        lot.activeSince = uint40(block.timestamp);
        Queue storage queue = _queues[buyer];
        uint48 id48 = uint48(listingId);
        uint48 tail = queue.tail;
        if (tail == 0) {
            queue.head = id48;
        } else {
            _lots[tail].nextOfBuyer = id48;
            lot.prevOfBuyer = tail;
        }
        queue.tail = id48;
        emit TradeOpened(listingId, seller, buyer, energyWh, lot.pricePerKWh);
    }

    /// @notice Settles `energyWh` measured by `buyer`'s load meter (0 for a heartbeat), plus
    /// what earlier readings could not walk, against the buyer's open trades, oldest first, at
    /// most MAX_TRADES_PER_READING of them: each Wh moves its price from the buyer's escrow to the
    /// seller's credit; a fully delivered trade closes itself, and so does the oldest trade once
    /// a reading newer than the buyer's close request has settled its tail. What is left when the
    /// walk limit is reached is carried to the next reading; energy beyond every open lot was not
    /// bought and is not billed. Delivered tokens stay locked in escrow (nobody can move them) and
    /// are burned when the trade closes, which keeps a reading's gas low.
    /// Returns the energy carried over to the next reading.
    /// Requirements: called by the meter registry. Emits {DeliverySettled} per trade, and
    /// {ConnectionClosed}, {Credited} and the token's {Transfer}s for trades it closes.
    function settleDelivery(address buyer, uint256 energyWh) external returns (uint256 leftWh) {
        if (msg.sender != _registry) revert MarketCallerNotRegistry(msg.sender);
        Queue storage queue = _queues[buyer];
        (uint256 id, uint256 carried) = _headAndCarry(queue);
        if (id == 0) return 0; // nothing bought: the buyer used its own energy
        leftWh = energyWh + carried;
        for (uint256 i; i < MAX_TRADES_PER_READING; ++i) {
            Lot storage lot = _lots[id];
            // Slots 0 and 1 are read once each, as words (layout: see the Lot struct).
            uint256 word0;
            uint256 word1;
            assembly ("memory-safe") {
                word0 := sload(lot.slot)
                word1 := sload(add(lot.slot, 1))
            }
            uint256 lotWh = uint48(word0 >> 192);
            uint256 delivered = uint48(word0 >> 8);
            if (leftWh != 0) {
                uint256 take = lotWh - delivered;
                if (take > leftWh) take = leftWh;
                // take <= leftWh, so this cannot underflow.
                unchecked {
                    leftWh -= take;
                }
                uint256 paid;
                (delivered, paid) = _settle(lot, word0, word1, take);
                emit DeliverySettled(id, take, paid, delivered);
            }
            if (delivered != lotWh) {
                // Not delivered: it closes only if the buyer asked before this reading's block.
                uint256 requested = uint32(word1 >> 192);
                if (requested == 0 || block.timestamp <= requested) break;
            }
            uint256 next = lot.nextOfBuyer;
            _close(id, lot, delivered == lotWh ? address(0) : buyer);
            id = next;
            if (id == 0) {
                leftWh = 0; // beyond every open lot: not bought, not billed
                break;
            }
        }
        if (leftWh != carried) queue.carryWh = uint64(leftWh);
    }

    /// @notice Closes an open trade, or (the buyer, on the active trade) asks to close it.
    /// The buyer: a queued trade closes at once (its seller was not exporting); the active trade
    /// ({activeTradeOf}) is closed in two phases: this call records the request and the relays
    /// open; the buyer's next load reading settles the tail and closes it, or, after the close
    /// grace, a second call by either party closes it under the stall rule. The seller: once
    /// the trade is stalled (the buyer's load meter silent for the stall timeout) or the buyer's
    /// request is past its grace. Closing a stalled or unfinished active trade charges the most
    /// the buyer's meter could have drawn while silent (rating x silent time until the stall or the
    /// request, capped at the lot);
    /// every close charges at least `minChargeWh` (or the whole lot if smaller). The unspent
    /// deposit is credited to the buyer; undelivered tokens return to the seller.
    /// Requirements: trade Open; caller is its buyer or seller, under the rules above.
    /// Emits {CloseRequested}, or {StallCharged}/{DeliverySettled} when charged, then
    /// {ConnectionClosed}, {Credited} and the token's {Transfer}s.
    function closeConnection(uint256 tradeId) external {
        Lot storage lot = _lots[tradeId];
        if (lot.status != Status.Open) revert MarketTradeNotOpen(tradeId);
        address buyer = lot.buyer;
        bool active = lot.prevOfBuyer == 0;
        uint256 requested = lot.closeRequestedAt;
        if (msg.sender == buyer) {
            if (!active) {
                _close(tradeId, lot, msg.sender);
                return;
            }
            if (requested == 0) {
                lot.closeRequestedAt = uint32(block.timestamp);
                emit CloseRequested(tradeId, buyer, block.timestamp + _closeGrace);
                return;
            }
            if (block.timestamp < requested + _closeGrace) {
                revert MarketCloseAlreadyRequested(tradeId, requested + _closeGrace);
            }
        } else {
            if (msg.sender != lot.seller) revert MarketNotTradeParty(tradeId, msg.sender);
            uint256 stallsAt = _silentSince(lot, buyer) + _stallTimeout;
            if (requested != 0 && requested + _closeGrace < stallsAt) {
                stallsAt = requested + _closeGrace;
            }
            if (block.timestamp < stallsAt) revert MarketTradeNotStalled(tradeId, stallsAt);
        }
        if (active) _chargeSilence(tradeId, lot, buyer, requested);
        _close(tradeId, lot, msg.sender);
    }

    /// @notice Sends the caller all of its credit.
    /// Requirements: credit non-zero; the caller accepts Ether (otherwise nothing changes).
    /// Emits {Withdrawn}.
    function withdraw() external nonReentrant {
        uint256 amount = _credits[msg.sender];
        if (amount == 0) revert MarketNothingToWithdraw(msg.sender);
        _credits[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert MarketWithdrawalFailed(msg.sender, amount);
    }

    /// @notice Wei the caller would have to send to bid `pricePerKWh` on `listingId`.
    function depositFor(uint256 listingId, uint256 pricePerKWh) external view returns (uint256) {
        return _deposit(_lots[listingId].energyWh, pricePerKWh);
    }

    /// @notice Withdrawable credit of `account`.
    function creditOf(address account) external view returns (uint256) {
        return _credits[account];
    }

    /// @notice Everything about a lot (listing or trade).
    function lotOf(uint256 id) external view returns (LotInfo memory info) {
        Lot storage lot = _lots[id];
        info.status = lot.status;
        info.seller = lot.seller;
        info.buyer = lot.buyer;
        info.energyWh = lot.energyWh;
        info.pricePerKWh = lot.pricePerKWh;
        info.deadline = lot.deadline;
        info.deliveredWh = lot.deliveredWh;
        info.activeSince = lot.activeSince;
        if (lot.buyer != address(0)) info.depositWei = _deposit(lot.energyWh, lot.pricePerKWh);
        info.paidWei = _paid(lot.deliveredWh, lot.pricePerKWh);
        info.closeRequestedAt = lot.closeRequestedAt;
    }

    /// @notice Number of lots ever listed; ids run from 1 to this.
    function lotCount() external view returns (uint256) {
        return _lotCount;
    }

    /// @notice The trade `buyer`'s readings are settling now (its oldest open trade; 0 when
    /// none): the only one whose seller's export relay may be closed.
    function activeTradeOf(address buyer) external view returns (uint256) {
        return _queues[buyer].head;
    }

    /// @notice Energy (Wh) a reading of `buyer` could not walk yet; the next reading settles it.
    function carriedOf(address buyer) external view returns (uint256) {
        return _queues[buyer].carryWh;
    }

    /// @notice Every open trade of `buyer`, in settlement order (the first is active).
    function tradesOfBuyer(address buyer) external view returns (uint256[] memory ids) {
        uint256 n;
        for (uint256 id = _queues[buyer].head; id != 0; id = _lots[id].nextOfBuyer) ++n;
        ids = new uint256[](n);
        uint256 i;
        for (uint256 id = _queues[buyer].head; id != 0; id = _lots[id].nextOfBuyer) ids[i++] = id;
    }

    /// @notice Every Listed or Open lot of `seller`, in no particular order.
    function lotsOfSeller(address seller) external view returns (uint256[] memory) {
        return _lotsOfSeller[seller];
    }

    /// @notice When trade `tradeId` stalls (or stalled) if the buyer's load meter stays silent:
    /// the start of the silence plus the stall timeout (0 unless the trade is Open).
    function stallsAt(uint256 tradeId) external view returns (uint256) {
        Lot storage lot = _lots[tradeId];
        if (lot.status != Status.Open) return 0;
        return _silentSince(lot, lot.buyer) + _stallTimeout;
    }

    /// @notice The oldest and newest open trade of `buyer` (0 when none).
    function openTradesOf(address buyer) external view returns (uint256 oldest, uint256 newest) {
        Queue storage q = _queues[buyer];
        return (q.head, q.tail);
    }

    /// @notice The next-newer open trade of the same buyer (0 when none).
    function nextTradeOfBuyer(uint256 tradeId) external view returns (uint256) {
        return _lots[tradeId].nextOfBuyer;
    }

    /// @notice The deployment parameters.
    function parameters()
        external
        view
        returns (
            address token,
            address registry,
            uint256 minDuration,
            uint256 maxDuration,
            uint256 minIncrementPerKWh,
            uint256 stallTimeout,
            uint256 closeGrace,
            uint256 minChargeWh
        )
    {
        return (
            address(_token), _registry, _minDuration, _maxDuration, _minIncrementPerKWh,
            _stallTimeout, _closeGrace, _minChargeWh
        );
    }

    /// @dev The queue's head and carried energy, from one SLOAD of its slot.
    function _headAndCarry(Queue storage queue)
        private
        view
        returns (uint256 head, uint256 carried)
    {
        uint256 word;
        assembly ("memory-safe") {
            word := sload(queue.slot) // head 0-47, tail 48-95, carryWh 96-159
        }
        return (uint48(word), uint64(word >> 96));
    }

    /// @dev Adds `take` Wh to `lot`'s delivered energy (one SSTORE of slot 0, `word0`) and
    /// credits their price to the seller (from slot 1, `word1`); returns the new total and the
    /// price credited.
    function _settle(Lot storage lot, uint256 word0, uint256 word1, uint256 take)
        private
        returns (uint256 delivered, uint256 paid)
    {
        uint256 before = uint48(word0 >> 8);
        delivered = before + take;
        uint256 price = uint96(word0 >> 96);
        paid = _paid(delivered, price) - _paid(before, price);
        // A credit never exceeds the Ether the market holds.
        unchecked {
            _credits[address(uint160(word1))] += paid;
        }
        // delivered <= energyWh < 2^48: it fits the 48 bits it replaces.
        uint256 updated = (word0 & ~(uint256(type(uint48).max) << 8)) | (delivered << 8);
        assembly ("memory-safe") {
            sstore(lot.slot, updated)
        }
    }

    /// @dev Start of the buyer's silence for `lot`: its load meter's last accepted reading, or
    /// when the trade opened or became active, whichever is later.
    function _silentSince(Lot storage lot, address buyer) private view returns (uint256 since) {
        (uint256 readAt,) = IMeterRegistryView(_registry).lastLoadReadingOf(buyer);
        since = lot.activeSince;
        if (readAt > since) since = readAt;
    }

    /// @dev Charges the active trade `lot`, as delivered, for what a reading could not walk yet
    /// and the most the buyer's load meter could have drawn while silent (until the close
    /// request or the stall, since the relays opened then), capped at the undelivered lot.
    function _chargeSilence(uint256 id, Lot storage lot, address buyer, uint256 requested)
        private
    {
        (uint256 since, uint256 until, uint256 silentWh) = _silence(lot, buyer, requested);
        uint256 undelivered = lot.energyWh - lot.deliveredWh;
        uint256 charged = _takeCarry(buyer, undelivered) + silentWh;
        if (charged > undelivered) charged = undelivered;
        emit StallCharged(id, since, until, charged);
        if (charged != 0) _deliver(id, lot, charged);
    }

    /// @dev The buyer's silence on the active trade `lot`: from its last reading (or the
    /// trade's start) to now, but no later than the close request or the stall, since the
    /// relays opened then; and the most its load meter could have drawn meanwhile (rounded
    /// down). A seller who waits before closing a stalled trade is paid no more for the wait.
    function _silence(Lot storage lot, address buyer, uint256 requested)
        private
        view
        returns (uint256 since, uint256 until, uint256 silentWh)
    {
        (uint256 readAt, uint256 ratedPowerW) =
            IMeterRegistryView(_registry).lastLoadReadingOf(buyer);
        since = lot.activeSince;
        if (readAt > since) since = readAt;
        until = block.timestamp;
        if (requested != 0 && requested < until) until = requested;
        if (since + _stallTimeout < until) until = since + _stallTimeout;
        if (until > since) silentWh = (ratedPowerW * (until - since)) / 3600;
    }

    /// @dev Takes up to `maxWh` of what `buyer`'s readings could not walk yet; returns it.
    function _takeCarry(address buyer, uint256 maxWh) private returns (uint256 taken) {
        Queue storage queue = _queues[buyer];
        uint256 carried = queue.carryWh;
        taken = carried < maxWh ? carried : maxWh;
        if (taken != 0) queue.carryWh = uint64(carried - taken);
    }

    /// @dev Settles `energyWh` more of `lot` (at most its undelivered rest) to its seller.
    function _deliver(uint256 id, Lot storage lot, uint256 energyWh) private {
        uint256 price = lot.pricePerKWh;
        uint256 before = lot.deliveredWh;
        uint256 total = before + energyWh;
        uint256 paid = _paid(total, price) - _paid(before, price);
        lot.deliveredWh = uint48(total);
        _credits[lot.seller] += paid;
        emit DeliverySettled(id, energyWh, paid, total);
    }

    /// @dev Closes `lot`: unlinks it from the buyer's queue and the seller's lots, charges the
    /// minimum, credits the unspent deposit to the buyer, burns the delivered tokens and returns
    /// the undelivered ones to the seller.
    function _close(uint256 id, Lot storage lot, address closedBy) private {
        address buyer = lot.buyer;
        address seller = lot.seller;
        uint256 lotWh = lot.energyWh;
        uint256 delivered = lot.deliveredWh;
        uint256 price = lot.pricePerKWh;
        lot.status = Status.Closed;
        _removeFromSeller(seller, lot);

        Queue storage queue = _queues[buyer];
        uint48 prev = lot.prevOfBuyer;
        uint48 next = lot.nextOfBuyer;
        if (prev == 0) {
            queue.head = next;
            // The next trade starts delivering only now: its silence is counted from now too,
            // so its seller cannot close it for the time it spent waiting behind this one.
            if (next != 0) _lots[next].activeSince = uint40(block.timestamp);
        } else {
            _lots[prev].nextOfBuyer = next;
        }
        if (next == 0) queue.tail = prev;
        else _lots[next].prevOfBuyer = prev;
        if (queue.head == 0 && queue.carryWh != 0) queue.carryWh = 0; // no trade left to bill
        lot.prevOfBuyer = 0;
        lot.nextOfBuyer = 0;

        // Walking away costs the winner: the seller is paid for at least the minimum charge.
        uint256 minimumWh = _minChargeWh < lotWh ? _minChargeWh : lotWh;
        uint256 fee = delivered < minimumWh ? _paid(minimumWh, price) - _paid(delivered, price) : 0;
        // paid + fee = floor(max(d, m) * p / 1000) <= ceil(lot * p / 1000): the deposit covers it.
        uint256 refund = _deposit(lotWh, price) - _paid(delivered, price) - fee;
        uint256 returned = lotWh - delivered;
        emit ConnectionClosed(id, closedBy, delivered, refund, returned);
        if (fee != 0) {
            _credits[seller] += fee;
            emit Credited(seller, id, fee);
        }
        if (refund != 0) {
            _credits[buyer] += refund;
            emit Credited(buyer, id, refund);
        }
        if (delivered != 0) _token.burnDelivered(delivered);
        if (returned != 0) _transferTokens(seller, returned);
    }

    /// @dev Takes `lot` out of `seller`'s active lots (swap with the last, pop).
    function _removeFromSeller(address seller, Lot storage lot) private {
        uint256[] storage own = _lotsOfSeller[seller];
        uint256 index = lot.sellerSlot - 1;
        uint256 last = own[own.length - 1];
        if (index != own.length - 1) {
            own[index] = last;
            _lots[last].sellerSlot = uint32(index + 1);
        }
        own.pop();
        lot.sellerSlot = 0;
    }

    /// @dev Sends escrowed tokens; the market's own token, so a failure reverts.
    function _transferTokens(address to, uint256 energyWh) private {
        // The token is our own ERC-20, which reverts on failure and returns true otherwise.
        _token.transfer(to, energyWh);
    }

    /// @dev Deposit for a whole lot, rounded up so the escrow always covers every Wh.
    function _deposit(uint256 energyWh, uint256 pricePerKWh) private pure returns (uint256) {
        return (energyWh * pricePerKWh + 999) / 1000;
    }

    /// @dev Amount owed to the seller for the first `deliveredWh`, rounded down.
    function _paid(uint256 deliveredWh, uint256 pricePerKWh) private pure returns (uint256) {
        return (deliveredWh * pricePerKWh) / 1000;
    }
}
