"""The live mount: a FUSE passthrough over the protected directory that journals
every change durably (invariants I1, I6, I7). docs/live.md describes the parts and
the concurrency rules; `cloudfs.live.mount` is where a mount starts."""
