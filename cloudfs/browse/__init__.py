"""Reading snapshots back: the read-only snapshot mount, and the pieces restore shares.

FUSE-free (restore uses them too):
  names     what each snapshot is called (time names, Samba @GMT names) and
            how a user's SNAPSHOT argument picks one
  blobs     verified blob fetching: coalesced ranged GETs, a bounded memory
            cache, an encrypted on-disk cache (diskcache)
  trees     decoded directory nodes and block lists, cached; tree prefetch
  history   the per-file history view: union listings and distinct versions

The mount itself (pyfuse3): namespace (what is where), fs (thin handlers),
mount (the process). docs/browse.md describes the design.
"""
