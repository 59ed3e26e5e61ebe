"""The virtual tree: inodes, listings with a TTL, name mapping. Knows only the Provider protocol."""
