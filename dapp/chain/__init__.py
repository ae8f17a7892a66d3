"""The chain layer: the only part of the project that imports web3."""
