"""cloudfs: a FUSE filesystem with transparent, encrypted, incremental backup."""

__version__ = "0.1.0"
