"""The chain layer: the only part of the project that talks to web3 (tests/test_layering.py).

- `client`: `ChainClient`, what the rest of the app uses (reads, actions, mining, listener);
- `transports`: node URL → Web3 (HTTP, WebSocket, IPC, in-process), raw JSON-RPC requests;
- `failures`: the one translation of "the node is not there" into `ChainUnavailable`;
- `detection`: who the node is and what it can do (`NodeInfo`, `detect`);
- `mining`: start/stop mining on whatever the node offers (`MiningControl`, `MiningStatus`);
- `tx`, `pending`, `listener`, `discovery`, `deploy`, `contracts`, `anvil`, `inprocess`.
"""
