"""Providers: one per cloud API family. They speak HTTP (httpx) and nothing else.

Providers never import ``fusefs.vfs``, ``fusefs.cache`` or ``fusefs.fuse_ops``.
"""
