"""The configuration file: one TOML file naming every protected directory.

```toml
interval = "15min"                      # defaults for every directory

[directories.documents]
source = "/home/me/documents"
mountpoint = "/home/me/documents"       # optional: over itself by default
repository = "s3://my-bucket/documents"
password_command = "secret-tool lookup cloudfs documents"

[directories.documents.retention]
keep_daily = 7
```

`load()` finds, parses and checks it (`loader`); `schema` says which keys
exist and what each may hold; `units` parses sizes and durations. This
package imports only the standard library at the top, so the command line can
use it without slowing down.
"""

from cloudfs.settings.loader import ConfigFile, Directory, default_path, load
from cloudfs.settings.units import OFF, parse_address, parse_duration, parse_duration_or_off, parse_size

__all__ = ["ConfigFile", "Directory", "OFF", "default_path", "load", "parse_address", "parse_duration",
           "parse_duration_or_off", "parse_size"]
