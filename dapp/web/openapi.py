"""The OpenAPI 3.1 document of the JSON API, written out by hand next to the routes it describes."""

from __future__ import annotations

from typing import Any

from hardware.protocol import KINDS

AMOUNT = {"type": "string", "pattern": r"^(\d+(\.\d*)?|\.\d+)$"}
ADDRESS = {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}
TX_RESULT = {
    "type": "object",
    "required": ["tx_hash", "message"],
    "properties": {
        "tx_hash": {"type": "string", "description": "the transaction, pending until mined"},
        "message": {"type": "string"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {
    "400": _error("Bad input or missing CSRF token; nothing changed"),
    "401": _error("Not logged in, or the session expired"),
    "409": _error("Not possible now (funds, the lot's state, the contract's rules)"),
    "429": _error("Too many login attempts; see retry_after (seconds)"),
    "503": _error("The chain is unavailable; nothing was sent"),
    "404": _error("No such contract"),
    "403": _error("Accounts are created and imported from this machine only "
                  "(MICROGRID_ACCOUNTS_FROM_NETWORK allows others)"),
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, response: dict[str, Any], *, body: dict[str, Any] | None = None,
        auth: bool = True, status: str = "200", errors: tuple[str, ...] = ("400", "401", "503"),
        tag: str = "market", params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {status: response, **{code: ERRORS[code] for code in errors}},
    }
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if not auth:
        op["security"] = []
    if params:
        op["parameters"] = params
    return op


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


LOT_ID = [{"name": "lot_id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 1}}]
TRADE_ID = [{"name": "trade_id", "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1}}]
METER_ADDRESS = [{"name": "address", "in": "path", "required": True, "schema": ADDRESS,
                  "description": "the meter's own address (its ID)"}]
ABI_NAME = [{"name": "name", "in": "path", "required": True,
             "schema": {"enum": ["EnergyToken", "MeterRegistry", "EnergyMarket"]}}]
REF = "#/components/schemas/"


def openapi_document(server_url: str) -> dict[str, Any]:
    """The document, with `server_url` (…/api/v1) as its server."""
    write = ("400", "401", "409", "503")
    paths: dict[str, Any] = {
        "/session": {
            "get": _op("Who is logged in, and the CSRF token", _json({"$ref": REF + "Session"}),
                       auth=False, errors=(), tag="session"),
            "post": _op("Log in", _json({"$ref": REF + "Session"}),
                        body=_obj(["address", "passphrase"], address=ADDRESS,
                                  passphrase={"type": "string"}),
                        auth=False, errors=("400", "401", "429"), tag="session"),
            "delete": _op("Log out (the key is forgotten)", _json(_obj(["logged_in"], logged_in={
                "type": "boolean"})), auth=False, errors=("400",), tag="session"),
        },
        "/accounts": {
            "get": _op("The keystore's accounts", _json(_obj(["accounts"], accounts={
                "type": "array", "items": {"$ref": REF + "Account"}})), auth=False, errors=(),
                tag="session"),
            "post": _op("Create an account", _json(_obj(["address"], address=ADDRESS), "Created"),
                        body=_obj(["passphrase"], passphrase={"type": "string", "minLength": 8},
                                  confirm={"type": "string"}, label={"type": "string"}),
                        auth=False, status="201", errors=("400", "403", "429"), tag="session"),
        },
        "/accounts/import": {
            "post": _op("Import a geth (V3) keystore file", _json(_obj(["address"],
                                                                       address=ADDRESS),
                                                                  "Created"),
                        body=_obj(["keystore", "passphrase"], keystore={
                            "description": "the key file: a JSON object, or its base64 text "
                                           "(multipart field `keyfile` also works)"},
                            passphrase={"type": "string"}, label={"type": "string"}),
                        auth=False, status="201", errors=("400", "403", "429"), tag="session"),
        },
        "/chain": {
            "get": _op("The network: chain id, latest block, mining, the contracts' addresses "
                       "and deployment block, links to their ABIs",
                       _json({"$ref": REF + "Chain"}), auth=False, errors=("503",),
                       tag="network"),
        },
        "/abi/{name}": {
            "get": _op("The ABI of one contract, from the committed build artifacts",
                       _json(_obj(["contract", "abi"], contract={"type": "string"},
                                  abi={"type": "array", "items": {"type": "object"}})),
                       auth=False, errors=("404",), tag="network", params=ABI_NAME),
        },
        "/wallet": {
            "get": _op("Balances, credit, pending transactions, generation",
                       _json({"$ref": REF + "Wallet"}), errors=("401",), tag="wallet"),
        },
        "/wallet/pending": {
            "get": _op("Pending transactions", _json(_obj(["pending"], pending={
                "type": "array", "items": {"$ref": REF + "PendingTx"}})), errors=("401", "503"),
                tag="wallet"),
        },
        "/wallet/send": {
            "post": _op("Send Ether", _json(TX_RESULT, "Sent (pending)"),
                        body=_obj(["to", "amount"], to=ADDRESS,
                                  amount={**AMOUNT, "description": "ether, up to 18 decimals"}),
                        status="202", errors=write, tag="wallet"),
        },
        "/wallet/withdraw": {
            "post": _op("Withdraw all market credit", _json(TX_RESULT, "Sent (pending)"),
                        status="202", errors=write, tag="wallet"),
        },
        "/mining": {
            "get": _op("Mining state", _json({"$ref": REF + "Mining"}), errors=("401",),
                       tag="wallet"),
            "post": _op("Start or stop mining", _json({"$ref": REF + "Mining"}),
                        body=_obj(["action"], action={"enum": ["start", "stop"]}),
                        errors=write, tag="wallet"),
        },
        "/meters/offers": {
            "get": _op("Meters the grid operator offered to you, not yet answered",
                       _json(_obj(["offers"], offers={"type": "array",
                                                      "items": {"$ref": REF + "MeterOffer"}})),
                       errors=("401",), tag="meters"),
        },
        "/meters/{address}/accept": {
            "post": _op("Accept a meter offered to you: its signed readings count for you",
                        _json(TX_RESULT, "Sent (pending)"), status="202", errors=write,
                        tag="meters", params=METER_ADDRESS),
        },
        "/meters/{address}/decline": {
            "post": _op("Decline a meter offered to you", _json(TX_RESULT, "Sent (pending)"),
                        status="202", errors=write, tag="meters", params=METER_ADDRESS),
        },
        "/market": {
            "get": _op("Open listings, open trades, cleared prices",
                       _json({"$ref": REF + "Market"}), errors=("401",)),
        },
        "/market/mine": {
            "get": _op("The account's own open trades (settlement order) and lots, exactly, from "
                       "the market's per-account indexes",
                       _json(_obj(["buying", "selling", "active"],
                                  buying={"type": "array", "items": {"type": "integer"}},
                                  selling={"type": "array", "items": {"type": "integer"}},
                                  active={"type": ["integer", "null"]})),
                       errors=("401",)),
        },
        "/market/listings": {
            "post": _op("Sell: list energy tokens for auction", _json(TX_RESULT, "Sent"),
                        body=_obj(["energy", "price", "duration"],
                                  energy={**AMOUNT, "description": "kWh, up to 3 decimals"},
                                  price={**AMOUNT, "description": "start price per kWh"},
                                  price_unit={"enum": ["ether", "gwei", "wei"],
                                              "default": "ether"},
                                  duration=AMOUNT,
                                  duration_unit={"enum": ["seconds", "minutes", "hours", "days"],
                                                 "default": "minutes"}),
                        status="202", errors=write),
        },
        "/market/listings/{lot_id}/bids": {
            "post": _op("Bid on a listing (the whole lot's price is escrowed)",
                        _json(TX_RESULT, "Sent"),
                        body=_obj(["price"], price={**AMOUNT, "description": "per kWh"},
                                  price_unit={"enum": ["ether", "gwei", "wei"],
                                              "default": "ether"}),
                        status="202", errors=write, params=LOT_ID),
        },
        "/market/listings/{lot_id}/finalize": {
            "post": _op("End an auction whose deadline has passed", _json(TX_RESULT, "Sent"),
                        status="202", errors=write, params=LOT_ID),
        },
        "/market/trades/{trade_id}/close": {
            "post": _op("Close Connection: end an open trade (the buyer's active trade: a request;"
                        " its meter's next reading closes it)", _json(TX_RESULT, "Sent"),
                        status="202", errors=write, params=TRADE_ID),
        },
    }
    agent_limits = {
        "reserve_percent": {"type": ["number", "string"], "minimum": 0, "maximum": 100,
                            "description": "battery reserve the agent keeps, in %"},
        "floor_eth_per_kwh": {**AMOUNT, "description": "lowest price it sells at, ETH per kWh"},
        "ceiling_eth_per_kwh": {**AMOUNT,
                                "description": "highest price it bids, ETH per kWh"},
        "daily_limit_eth": {**AMOUNT, "description": "most it spends per (chain, UTC) day, ETH"},
    }
    paths["/agent"] = {
        "get": _op("The trading agent: on/off, limits, decision log",
                   _json({"$ref": REF + "Agent"}), errors=("401",), tag="agent"),
        "put": _op("Turn the trading agent on or off and set its limits (left-out limits keep "
                   "their saved values)", _json({"$ref": REF + "Agent"}),
                   body=_obj(["on"], on={"type": "boolean"}, **agent_limits),
                   errors=("400", "401"), tag="agent"),
    }
    party = _obj(["address", "name"], address=ADDRESS, name={"type": "string"})
    schemas = {
        "Error": _obj(["error"], error={"type": "string", "description": "a sentence"},
                      field={"type": "string"}, retry_after={"type": "number"}),
        "Session": _obj(["logged_in", "csrf_token"], logged_in={"type": "boolean"},
                        address={"type": ["string", "null"]}, csrf_token={"type": "string"}),
        "Account": _obj(["address"], address=ADDRESS, label={"type": ["string", "null"]},
                        name={"type": "string"}),
        "Mining": _obj(["mining", "available", "detail"], mining={"type": "boolean"},
                       available={"type": "boolean"}, detail={"type": "string"},
                       block_time={"type": ["number", "null"]}),
        "Chain": _obj(
            ["available", "chain_id", "block", "deployment", "abi"],
            available={"type": "boolean"},
            message={"type": "string", "description": "why the chain cannot be read"},
            chain_id={"type": ["integer", "null"]},
            block={"type": ["integer", "null"], "description": "the latest block"},
            timestamp={"type": ["integer", "null"], "description": "the latest block's time"},
            server_time={"type": "number"},
            mining={"oneOf": [{"$ref": REF + "Mining"}, {"type": "null"}]},
            deployment={"oneOf": [{"$ref": REF + "Deployment"}, {"type": "null"}]},
            deployment_message={"type": "string",
                                "description": "why the deployment is not known"},
            contracts={"type": "object", "description": "contract name of each role",
                       "additionalProperties": {"type": "string"}},
            abi={"type": "object", "description": "URL of each role's ABI (GET /abi/{name})",
                 "additionalProperties": {"type": "string"}},
        ),
        "Deployment": _obj(["token", "registry", "market", "block"], token=ADDRESS,
                           registry=ADDRESS, market=ADDRESS, operator=ADDRESS,
                           block={"type": "integer",
                                  "description": "the block the contracts were deployed "
                                                 "in: read their events from here on"}),
        "PendingTx": _obj(["hash", "kind"], hash={"type": "string"}, kind={"type": "string"},
                          nonce={"type": "integer"}, value={"type": "string"},
                          age_seconds={"type": "number"}),
        "Wallet": _obj(
            ["address", "available"], address=ADDRESS, label={"type": ["string", "null"]},
            available={"type": "boolean"}, message={"type": "string"},
            tokens_kwh={"type": "string"}, tokens_wh={"type": "string"},
            ether={"type": "string"}, ether_wei={"type": "string"},
            credit={"type": "string"}, credit_wei={"type": "string"},
            pending={"type": "array", "items": {"$ref": REF + "PendingTx"}},
            generation={"type": "object"}, history={"type": "object"},
        ),
        "MeterOffer": _obj(
            ["address", "kind", "status", "rated_power_w"], address=ADDRESS,
            kind={"enum": list(KINDS)}, status={"type": "string"},
            rated_power_w={"type": "integer"},
        ),
        "Listing": _obj(
            ["id", "seller", "energy_kwh", "deadline"], id={"type": "integer"}, seller=party,
            energy_kwh={"type": "string"}, start_price={"type": ["string", "null"]},
            highest_bid={"type": ["string", "null"]},
            bidder={"oneOf": [party, {"type": "null"}]},
            min_bid={"type": "string"}, deadline={"type": "integer"},
            ends_in={"type": "integer"}, ended={"type": "boolean"},
            min_charge_kwh={"type": "string", "description": "the minimum charge of a trade"},
            min_charge_at_min_bid={"type": "string",
                                   "description": "ETH the minimum charge costs at min_bid"},
        ),
        "Trade": _obj(
            ["id", "seller", "buyer", "price"], id={"type": "integer"}, seller=party,
            buyer=party, energy_kwh={"type": "string"}, price={"type": "string"},
            delivered_kwh={"type": "string"}, paid={"type": "string"},
            relay={"type": "string", "description": "closed, open, offline, unknown, no meter"},
            state={"type": "string", "enum": ["delivering", "queued", "stalled", "closing"]},
            active={"type": "boolean",
                    "description": "the buyer's readings settle this trade (its seller exports)"},
            closing={"type": "boolean", "description": "the buyer asked to close (two-phase)"},
            stalls_at={"type": "integer", "description": "chain time it stalls if silent"},
            seller_can_close_at={"type": "integer"}, seller_can_close={"type": "boolean"},
            carried_kwh={"type": "string",
                         "description": "measured, settled by the buyer's next reading"},
            min_charge_kwh={"type": "string"},
        ),
        "Market": _obj(
            ["available", "listings", "trades", "cleared"], available={"type": "boolean"},
            message={"type": "string"}, chain_time={"type": ["integer", "null"]},
            listings={"type": "array", "items": {"$ref": REF + "Listing"}},
            trades={"type": "array", "items": {"$ref": REF + "Trade"}},
            cleared={"type": "array", "items": _obj(["id", "time", "price"],
                                                     id={"type": "integer"},
                                                     time={"type": "integer"},
                                                     price={"type": "string"})},
        ),
    }
    schemas["Agent"] = _obj(
        ["on", "limits", "log", "notes"], on={"type": "boolean"},
        limits={"oneOf": [_obj(list(agent_limits), **{k: {"type": "string"}
                                                        for k in agent_limits}),
                          {"type": "null"}]},
        expires_at={"type": ["number", "null"],
                    "description": "server time (Unix s) the agent turns itself off"},
        capacity_kwh={"type": "string", "description": "the battery the agent assumes"},
        household={"oneOf": [{"type": "null"}, _obj(
            ["battery_percent", "stored_kwh", "net_load_w", "spent_today_eth"],
            battery_percent={"type": "string"}, stored_kwh={"type": "string"},
            net_load_w={"type": "string"}, spent_today_eth={"type": "string"},
            daily_limit_eth={"type": "string"})],
            "description": "the household as the agent's last run saw it"},
        notes=_obj(["key", "signal"], key={"type": "string"}, signal={"type": "string"}),
        log={"type": "array", "description": "newest first", "items": _obj(
            ["time", "kind", "text"], time={"type": "number"}, time_text={"type": "string"},
            kind={"enum": ["action", "note", "failure", "status"]},
            text={"type": "string"}, on={"type": "boolean"},
            household={"description": "as in `household`, when the agent is on"})},
        message={"type": "string", "description": "after PUT: what changed"},
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Microgrid Energy Exchange API",
            "version": "1",
            "description": (
                "The reads and actions of the web pages, for scripts and other DApps. Log in "
                "with POST /session (a session cookie), then send the CSRF token from "
                "GET /session in the X-CSRF-Token header with every POST and DELETE. Amounts "
                "are decimal strings: energy in kWh, prices in ether (or gwei/wei) per kWh. "
                "Actions answer 202 with the transaction hash; the transaction is pending until "
                "mined (watch GET /wallet/pending). GET /chain needs no login: the chain id, "
                "the contracts' addresses and links to their ABIs, for other DApps."
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"session": [], "csrf": []}],
        "tags": [{"name": "session"}, {"name": "network"}, {"name": "wallet"},
                 {"name": "meters"}, {"name": "market"}, {"name": "agent"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "microgrid_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
        },
    }
