"""Errors a user may see.

Every error that reaches the command line is a CloudfsError whose message is one
clear line; the CLI prints it and exits non-zero. Lower layers raise the most
specific subclass so callers can tell "retry later" from "fix your input".
"""


class CloudfsError(Exception):
    """Base class: str(error) is the one line shown to the user."""

    exit_code = 1


class UsageError(CloudfsError):
    """The command line or a configuration value is wrong."""

    exit_code = 2


class StoreError(CloudfsError):
    """The object store failed or refused a request."""


class StoreUnavailable(StoreError):
    """The store could not be reached, even after retries."""


class AccessDenied(StoreError):
    """The store refused the credentials or the request (HTTP 403)."""

    def __init__(self, message: str, permission: str = ""):
        super().__init__(message)
        self.permission = permission     # the IAM permission the request needed, if known


class BucketNotFound(StoreError):
    """The bucket named in the repository URL does not exist."""


class ObjectNotFound(StoreError):
    """A named object is missing from the store."""

    def __init__(self, name: str, message: str | None = None):
        super().__init__(message or f"object {name!r} is missing from the store")
        self.name = name


class ObjectExists(StoreError):
    """An object that must be written once already exists."""

    def __init__(self, name: str):
        super().__init__(f"object {name!r} already exists and will not be overwritten")
        self.name = name


class IntegrityError(CloudfsError):
    """Stored bytes failed authentication or hash verification."""

    def __init__(self, name: str, detail: str):
        super().__init__(f"integrity error in {name}: {detail}")
        self.name = name
        self.detail = detail


class WrongPassphrase(CloudfsError):
    """No key slot opens with the given passphrase."""


class RepositoryError(CloudfsError):
    """The repository is missing, already exists, or is of an unsupported format."""


class MaintenanceOnly(CloudfsError):
    """A delete was asked of the writer role's store: deleting is maintenance work (I9)."""


class LocalStateError(CloudfsError):
    """A file cloudfs keeps on this machine (the local blob index, a cache) cannot be
    written or read: a full disk, an I/O error. Nothing in the repository is wrong."""


class MountError(CloudfsError):
    """A live mount cannot be started, stopped or inspected (bad paths, busy, no FUSE)."""


def leaf_errors(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as trio nurseries raise them."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaf_errors(inner)]
    return [error]


def first_cloudfs_error(error: BaseException) -> CloudfsError | None:
    """The CloudfsError to report for `error`, looking inside exception groups."""
    return next((leaf for leaf in leaf_errors(error) if isinstance(leaf, CloudfsError)), None)
