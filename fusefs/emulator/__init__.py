"""The emulator of the cloud APIs and its world generator (independent of the rest of fusefs)."""
