"""`cloudfs restore`: a snapshot, or one path in it, back onto local disk.

restorer.py runs it (create, fill, finish, in streaming batches); walk.py is
what it goes through; writing.py writes the blocks."""

from cloudfs.restore.restorer import RestoreOptions, RestoreReport, restore, split_argument
from cloudfs.restore.writing import RestoreError

__all__ = ["RestoreError", "RestoreOptions", "RestoreReport", "restore", "split_argument"]
