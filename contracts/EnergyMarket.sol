// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

interface IEnergyTokenEscrow is IERC20 {
    function escrowFrom(address seller, uint256 energyWh) external;
    function burnDelivered(uint256 energyWh) external;
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
/// reading does not complete, so only completed trades cost more than one step.
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
        uint256 lastDeliveryAt;
        uint256 depositWei; // escrowed by the buyer (0 while nobody has bid)
        uint256 paidWei; // already credited to the seller
    }

    /// @dev Three slots. A delivery reads and writes slot 0 and reads the seller from slot 1.
    struct Lot {
        Status status;
        uint48 deliveredWh;
        uint40 lastDeliveryAt;
        uint96 pricePerKWh;
        uint48 energyWh;
        address seller;
        uint40 deadline;
        address buyer;
        uint48 prevOfBuyer;
        uint48 nextOfBuyer;
    }

    /// @dev A buyer's open trades, oldest first.
    struct Queue {
        uint48 head;
        uint48 tail;
    }

    /// @notice At most this many of a buyer's trades are settled by one reading.
    uint256 public constant MAX_TRADES_PER_READING = 4;

    IEnergyTokenEscrow private immutable _token;
    address private immutable _registry;
    uint256 private immutable _minDuration;
    uint256 private immutable _maxDuration;
    uint256 private immutable _minIncrementPerKWh;
    uint256 private immutable _deliveryTimeout;

    uint256 private _lotCount;
    mapping(uint256 id => Lot) private _lots;
    mapping(address buyer => Queue) private _queues;
    mapping(address account => uint256) private _credits;

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
    /// @notice The seller may close only after the delivery timeout without readings.
    error MarketDeliveryNotTimedOut(uint256 tradeId, uint256 timesOutAt);
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
        uint256 deliveryTimeout_
    ) {
        if (minDuration_ == 0 || maxDuration_ < minDuration_ || deliveryTimeout_ == 0) {
            revert MarketInvalidParameters();
        }
        _token = IEnergyTokenEscrow(token_);
        _registry = registry_;
        _minDuration = minDuration_;
        _maxDuration = maxDuration_;
        _minIncrementPerKWh = minIncrementPerKWh_;
        _deliveryTimeout = deliveryTimeout_;
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
        lot.deadline = uint40(deadline);
        lot.pricePerKWh = uint96(startPricePerKWh);
        lot.energyWh = uint48(energyWh);
        lot.status = Status.Listed;
        emit Listed(listingId, msg.sender, energyWh, startPricePerKWh, deadline);
        _token.escrowFrom(msg.sender, energyWh);
    }

    /// @notice Bids `pricePerKWh` on a listing, escrowing the whole lot's price as `msg.value`
    /// (see {depositFor}). The previous highest bidder's deposit becomes their credit.
    /// Requirements: listing Listed and before its deadline; caller is not the seller; price at
    /// least the start price (first bid) or the highest bid plus the minimum increment; msg.value
    /// equals the deposit. Emits {BidPlaced}, and {Credited} for the outbid bidder.
    function bid(uint256 listingId, uint256 pricePerKWh) external payable {
        Lot storage lot = _lots[listingId];
        if (lot.status != Status.Listed) revert MarketListingNotOpen(listingId);
        if (block.timestamp >= lot.deadline) revert MarketAuctionEnded(listingId, lot.deadline);
        if (msg.sender == lot.seller) revert MarketSellerCannotBid(listingId);
        if (pricePerKWh > type(uint96).max) revert MarketPriceOutOfRange(pricePerKWh);

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
            emit ListingExpired(listingId, seller, energyWh);
            _transferTokens(seller, energyWh);
            return;
        }
        lot.status = Status.Open;
        lot.lastDeliveryAt = uint40(block.timestamp);
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

    /// @notice Settles `energyWh` measured by `buyer`'s load meter against the buyer's open
    /// trades, oldest first, at most MAX_TRADES_PER_READING of them: each Wh moves its price from
    /// the buyer's escrow to the seller's credit; a fully delivered trade closes itself. Energy
    /// beyond the open lots is not billed. Delivered tokens stay locked in escrow (nobody can
    /// move them) and are burned when the trade closes, which keeps a reading's gas low.
    /// Requirements: called by the meter registry. Emits {DeliverySettled} per trade, and
    /// {ConnectionClosed}, {Credited} and the token's {Transfer}s for trades it completes.
    function settleDelivery(address buyer, uint256 energyWh) external {
        if (msg.sender != _registry) revert MarketCallerNotRegistry(msg.sender);
        uint256 id = _queues[buyer].head;
        uint256 left = energyWh;
        for (uint256 i; i < MAX_TRADES_PER_READING && id != 0 && left != 0; ++i) {
            Lot storage lot = _lots[id];
            uint256 price = lot.pricePerKWh;
            uint256 lotWh = lot.energyWh;
            uint256 before = lot.deliveredWh;
            uint256 take = lotWh - before;
            if (take > left) take = left;
            // take <= left, so this cannot underflow.
            unchecked {
                left -= take;
            }
            uint256 delivered = before + take;
            uint256 paid = _paid(delivered, price) - _paid(before, price);
            lot.deliveredWh = uint48(delivered);
            lot.lastDeliveryAt = uint40(block.timestamp);
            _credits[lot.seller] += paid;
            emit DeliverySettled(id, take, paid, delivered);
            if (delivered != lotWh) break;
            uint256 next = lot.nextOfBuyer;
            _close(id, lot, address(0));
            id = next;
        }
    }

    /// @notice Closes an open trade: the relays open, the buyer's unspent deposit is credited back
    /// and the undelivered tokens return to the seller.
    /// Requirements: trade Open; caller is the buyer, or the seller once no delivery was reported
    /// for the delivery timeout (for a trade queued behind the buyer's older trade: no delivery to
    /// that older trade either). Emits {ConnectionClosed}, {Credited} (when a refund is due) and
    /// the token's {Transfer} (when tokens return).
    function closeConnection(uint256 tradeId) external {
        Lot storage lot = _lots[tradeId];
        if (lot.status != Status.Open) revert MarketTradeNotOpen(tradeId);
        if (msg.sender != lot.buyer) {
            if (msg.sender != lot.seller) revert MarketNotTradeParty(tradeId, msg.sender);
            uint256 lastActivity = lot.lastDeliveryAt;
            if (lot.prevOfBuyer != 0) {
                // Waiting behind the buyer's older trade: stalled only if that one is stalled.
                uint256 headActivity = _lots[_queues[lot.buyer].head].lastDeliveryAt;
                if (headActivity > lastActivity) lastActivity = headActivity;
            }
            uint256 timesOutAt = lastActivity + _deliveryTimeout;
            if (block.timestamp < timesOutAt) revert MarketDeliveryNotTimedOut(tradeId, timesOutAt);
        }
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
        info.lastDeliveryAt = lot.lastDeliveryAt;
        if (lot.buyer != address(0)) info.depositWei = _deposit(lot.energyWh, lot.pricePerKWh);
        info.paidWei = _paid(lot.deliveredWh, lot.pricePerKWh);
    }

    /// @notice Number of lots ever listed; ids run from 1 to this.
    function lotCount() external view returns (uint256) {
        return _lotCount;
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
            uint256 deliveryTimeout
        )
    {
        return (
            address(_token), _registry, _minDuration, _maxDuration, _minIncrementPerKWh,
            _deliveryTimeout
        );
    }

    /// @dev Closes `lot`: unlinks it from the buyer's queue, credits the unspent deposit to the
    /// buyer, burns the delivered tokens and returns the undelivered ones to the seller.
    function _close(uint256 id, Lot storage lot, address closedBy) private {
        address buyer = lot.buyer;
        uint256 lotWh = lot.energyWh;
        uint256 delivered = lot.deliveredWh;
        uint256 price = lot.pricePerKWh;
        lot.status = Status.Closed;

        Queue storage queue = _queues[buyer];
        uint48 prev = lot.prevOfBuyer;
        uint48 next = lot.nextOfBuyer;
        if (prev == 0) {
            queue.head = next;
            // The next trade starts delivering only now: its delivery timeout starts now too,
            // so its seller cannot close it for the time it spent waiting behind this one.
            if (next != 0) _lots[next].lastDeliveryAt = uint40(block.timestamp);
        } else {
            _lots[prev].nextOfBuyer = next;
        }
        if (next == 0) queue.tail = prev;
        else _lots[next].prevOfBuyer = prev;
        lot.prevOfBuyer = 0;
        lot.nextOfBuyer = 0;

        // paid never exceeds the deposit: floor(d * p / 1000) <= ceil(lot * p / 1000) for d <= lot.
        uint256 refund = _deposit(lotWh, price) - _paid(delivered, price);
        uint256 returned = lotWh - delivered;
        emit ConnectionClosed(id, closedBy, delivered, refund, returned);
        if (refund != 0) {
            _credits[buyer] += refund;
            emit Credited(buyer, id, refund);
        }
        if (delivered != 0) _token.burnDelivered(delivered);
        if (returned != 0) _transferTokens(lot.seller, returned);
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
