"""What every cloudfs process needs from this machine, below all the other parts.

`mounttable` reads /proc/self/mountinfo; `syscalls` holds the Linux calls Python
lacks (renameat2, utimensat, umount2); `statedir` is a mount's state directory
and the lock that says which process serves it; `fuseproc` runs one FUSE mount
as a process (detaching, signals, unmounting). The live mount, the snapshot
mount and the control socket use them; they know nothing of those.
"""
