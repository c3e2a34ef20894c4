"""The error tree of haven.

Every error the project raises derives from :class:`HavenError`. A subclass
exists per distinct handling decision; where a built-in fits, it is inherited
too, so callers that only know the standard library still catch it.
Third-party exceptions are translated where they enter (chain, database,
Redis, HTTP client) with ``raise ... from exc``.
"""

from __future__ import annotations


class HavenError(Exception):
    """Root of every error raised by haven."""


class ConfigError(HavenError, ValueError):
    """Settings are missing, malformed or contradictory.

    ``problems`` holds one message per offending key, each naming the key,
    the value received (masked when secret) and what was expected.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class MigrationError(HavenError, RuntimeError):
    """The schema cannot be brought to, or is not at, the code's version."""


class SchemaOutdatedError(MigrationError):
    """The database schema is older than the code: run `haven migrate`."""


class DatabaseUnavailableError(HavenError, ConnectionError):
    """PostgreSQL cannot be reached or dropped the connection; retry later."""


class RedisUnavailableError(HavenError, ConnectionError):
    """Redis cannot be reached; callers fall back to PostgreSQL."""


class ChainError(HavenError):
    """Root of errors talking to the chain."""


class RpcUnavailableError(ChainError, ConnectionError):
    """No RPC endpoint answered in time; safe to retry."""


class RpcResponseError(ChainError):
    """A node answered a JSON-RPC call with an error object.

    ``code`` and ``message`` are the node's own; ``kind`` is the class the
    chain client assigned to the wording (see ``haven.chain.classify``).
    """

    def __init__(self, method: str, code: int, message: str, kind: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        self.kind = kind
        super().__init__(f"{method} failed ({kind}, code {code}): {message}")


class ChainMismatchError(ChainError, ValueError):
    """The node serves another chain than the configured one."""


class PolicyViolationError(HavenError, PermissionError):
    """A signature was refused by the signing policy."""


class CustodyError(HavenError):
    """A signer key cannot be created, decrypted or used."""
