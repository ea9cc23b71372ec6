"""Read one object from an S3-compatible store (AWS S3, MinIO, Ceph RGW, SeaweedFS, ...).

Just what the share job needs: a GET signed with AWS Signature Version 4 (header auth), or
unsigned for a public bucket. No SDK: the signing is the published algorithm
(docs.aws.amazon.com, "Signature Version 4 signing process"), checked in the unit tests
against AWS's own worked example. Credentials come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN: the operator fills them from a Secret); they are
never logged, and neither is the signature.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key=<hidden>)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials | None:
        e = os.environ if env is None else env
        key, secret = e.get("AWS_ACCESS_KEY_ID", ""), e.get("AWS_SECRET_ACCESS_KEY", "")
        if not key and not secret:
            return None
        if not key or not secret:
            raise ValueError("S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set")
        return cls(key, secret, e.get("AWS_SESSION_TOKEN") or None)


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> ObjectRef:
        """s3://bucket/key/with/slashes"""
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket or not key:
            raise ValueError(f"an s3:// URI needs a bucket and a key: {uri!r}")
        return cls(bucket, key)


def object_url(ref: ObjectRef, endpoint: str | None, region: str) -> str:
    """Path-style on an explicit endpoint (what every S3-compatible store answers);
    virtual-hosted style on AWS itself (no endpoint)."""
    key = _quote(ref.key)
    if endpoint:
        return f"{endpoint.rstrip('/')}/{_quote(ref.bucket)}/{key}"
    return f"https://{ref.bucket}.s3.{region}.amazonaws.com/{key}"


def _quote(path: str) -> str:
    # S3 canonical URIs: every byte but the unreserved characters and '/' is %-encoded, once.
    return urllib.parse.quote(path, safe="/-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    creds: Credentials,
    region: str,
    now: dt.datetime,
    payload_sha256: str = EMPTY_SHA256,
    service: str = "s3",
) -> dict[str, str]:
    """The request's headers plus host, x-amz-date, x-amz-content-sha256, x-amz-security-token
    (with a session token) and Authorization (SigV4 over every header given)."""
    u = urllib.parse.urlsplit(url)
    amz_date = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    out = {k.lower(): v for k, v in headers.items()}
    out["host"] = u.netloc
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_sha256
    if creds.session_token:
        out["x-amz-security-token"] = creds.session_token
    names = sorted(out)
    canonical_headers = "".join(f"{n}:{' '.join(out[n].strip().split())}\n" for n in names)
    signed_headers = ";".join(names)
    query = urllib.parse.parse_qsl(u.query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query)
    )
    canonical_request = "\n".join(
        [method, u.path or "/", canonical_query, canonical_headers, signed_headers, payload_sha256]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signature = hmac.new(signing_key(creds.secret_access_key, date, region, service), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return out


def get_headers(url: str, creds: Credentials | None, region: str, now: dt.datetime | None = None) -> dict[str, str]:
    """Headers for a GET of url: signed with creds, or none at all (a public object)."""
    if creds is None:
        return {}
    return sign("GET", url, {}, creds, region, now or dt.datetime.now(dt.timezone.utc))


def error_summary(body: bytes) -> str:
    """'NoSuchKey: The specified key does not exist.' from an S3 XML error body (or '')."""
    import re

    text = body[:4096].decode("utf-8", errors="replace")
    code = re.search(r"<Code>([^<]{1,100})</Code>", text)
    msg = re.search(r"<Message>([^<]{1,300})</Message>", text)
    return ": ".join(m.group(1) for m in (code, msg) if m)
