"""The persistent block cache. Knows the Provider protocol, never a concrete provider or httpx."""
