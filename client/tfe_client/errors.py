"""Errors raised by the client library."""

from __future__ import annotations


class ProtocolError(Exception):
    """A message does not follow the wire format (client/PROTOCOL.md)."""


class InconsistentSharesError(ProtocolError):
    """Two workers returned different copies of the same replicated output share."""

    def __init__(self, share_index: int, holders: tuple[str, str]) -> None:
        self.share_index = share_index
        self.holders = holders
        super().__init__(
            f"output share z{share_index} differs between {holders[0]} and {holders[1]}: "
            f"one of them is faulty or tampered with; result discarded"
        )


class RemoteError(Exception):
    """The endpoint answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status} {code}: {message}")
