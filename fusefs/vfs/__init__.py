"""The filesystem over provider listings: the facade the FUSE adapter calls (fs.py), inodes and
listings with a TTL (tree.py), read-ahead across files, background downloads, saved listings.
Of the providers it knows only the Provider protocol."""
