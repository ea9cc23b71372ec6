"""tfe_client.crypto.b64d on the workers' Python (3.10, where it does its own strict check instead
of the stdlib's regular expression): the same verdict and bytes as base64.b64decode(validate=True).
tests/unit/test_client_wire.py checks the 3.11+ path the same way."""

import base64
import binascii
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from tfe_client.crypto import b64d
from tfe_client.errors import ProtocolError

CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n-_.\x00\u00e9"


def verdicts(s: str) -> tuple[bytes | None, bytes | None]:
    try:
        ref: bytes | None = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        ref = None
    try:
        ours: bytes | None = b64d(s, "x")
    except ProtocolError:
        ours = None
    return ours, ref


def test_this_is_the_workers_python():
    assert sys.version_info[:2] == (3, 10)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet=CHARS, max_size=40),
                 st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                 st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode() + "=")))
def test_same_as_strict_stdlib(s):
    ours, ref = verdicts(s)
    assert ours == ref


def test_edges():
    for s in ("", "=", "==", "AA==", "AAA=", "A===", "AA=A", "=AAA", "AA== ", "AA\n==", "AA-_", "\u00e9"):
        ours, ref = verdicts(s)
        assert ours == ref, s
