"""The app's I/O-free core: turn user input into validated values, call the chain, explain failures.

Nothing here imports Flask; the web blueprints, the JSON API and the Socket.IO handlers all call
the same services (`WalletService`, `MarketService`, `MeterBoard`, `AutoFinalizer`).
"""
