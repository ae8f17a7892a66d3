"""Trading agents: a household lets its server trade for it within limits it sets."""
