"""One exception base for everything dbkeeper raises; foreign errors are wrapped at module edges."""


class DbkeeperError(Exception):
    """Base of every error dbkeeper raises on purpose."""


class ConfigError(DbkeeperError):
    """One or more settings are invalid; `problems` names each setting."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class ExtensionsApiError(DbkeeperError):
    """The Lambda Extensions API refused a call or could not be reached."""

    def __init__(self, message: str, status: int | None = None, error_type: str | None = None):
        self.status = status
        self.error_type = error_type
        super().__init__(message)


class ListenError(DbkeeperError):
    """A local listener (TCP port or Unix socket) could not be set up."""


class StateFileError(DbkeeperError):
    """The state file that tells the wrapper what dbkeeper serves could not be written."""


class ProtocolError(DbkeeperError):
    """A peer sent bytes that break the MySQL protocol."""


class UpstreamError(DbkeeperError):
    """The upstream database could not be reached, refused us, or broke mid-conversation.

    `errno`/`sqlstate` are set when the server itself sent an ERR packet."""

    def __init__(self, message: str, errno: int | None = None, sqlstate: str | None = None):
        self.errno = errno
        self.sqlstate = sqlstate
        super().__init__(message)


class PoolTimeout(DbkeeperError):
    """No upstream connection became free within the borrow timeout."""
