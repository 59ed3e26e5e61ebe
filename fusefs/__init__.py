"""fusefs: a read-only FUSE filesystem over IoT cloud file stores."""

__version__ = "0.1.0"
