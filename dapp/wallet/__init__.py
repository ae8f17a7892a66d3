"""The user's wallet: geth-compatible keystore files and the keys unlocked for a session."""
