"""The S3 client of the share job (tfe_worker.s3): SigV4 against AWS's own worked examples, the
object URLs, credentials from the environment. The download itself is tested against a real
S3-compatible server in tests/integration/test_s3_model.py."""

import datetime as dt

import pytest

from tfe_worker import s3

# From the Amazon S3 API reference, "Signature Calculations for the Authorization Header:
# Transferring Payload in a Single Chunk (AWS Signature Version 4)", example "GET Object".
AWS_EXAMPLE = s3.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
AWS_EXAMPLE_TIME = dt.datetime(2013, 5, 24, 0, 0, 0, tzinfo=dt.timezone.utc)


def test_sigv4_matches_the_aws_get_object_example():
    h = s3.sign("GET", "https://examplebucket.s3.amazonaws.com/test.txt", {"Range": "bytes=0-9"}, AWS_EXAMPLE,
                "us-east-1", AWS_EXAMPLE_TIME)
    assert h["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert h["x-amz-date"] == "20130524T000000Z"
    assert h["x-amz-content-sha256"] == s3.EMPTY_SHA256
    assert h["host"] == "examplebucket.s3.amazonaws.com"


def test_sigv4_matches_the_aws_get_bucket_lifecycle_example():
    # same reference, example "GET Bucket Lifecycle": a query string without a value
    h = s3.sign("GET", "https://examplebucket.s3.amazonaws.com/?lifecycle", {}, AWS_EXAMPLE, "us-east-1",
                AWS_EXAMPLE_TIME)
    assert h["authorization"].endswith(
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
        "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    )


def test_sigv4_signing_key_matches_the_aws_derivation_example():
    # "Examples of how to derive a signing key for Signature Version 4" (IAM user guide)
    key = s3.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_session_token_is_signed_and_sent():
    creds = s3.Credentials("AKID", "secret", "the-session-token")
    h = s3.sign("GET", "http://127.0.0.1:9000/b/k", {}, creds, "eu-west-1", AWS_EXAMPLE_TIME)
    assert h["x-amz-security-token"] == "the-session-token"
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token," in h["authorization"]
    assert "/20130524/eu-west-1/s3/aws4_request" in h["authorization"]
    assert h["host"] == "127.0.0.1:9000"


def test_no_credentials_means_an_unsigned_request():
    assert s3.get_headers("https://b.s3.us-east-1.amazonaws.com/k", None, "us-east-1") == {}


@pytest.mark.parametrize(
    ("uri", "endpoint", "region", "url"),
    [
        ("s3://models/digits.h5", "http://127.0.0.1:9000", "us-east-1", "http://127.0.0.1:9000/models/digits.h5"),
        ("s3://models/a/b c+d.h5", "https://minio.example/", "x", "https://minio.example/models/a/b%20c%2Bd.h5"),
        ("s3://my-bucket/k.h5", None, "eu-central-1", "https://my-bucket.s3.eu-central-1.amazonaws.com/k.h5"),
    ],
)
def test_object_urls(uri, endpoint, region, url):
    assert s3.object_url(s3.ObjectRef.parse(uri), endpoint, region) == url


@pytest.mark.parametrize("uri", ["s3://", "s3://bucket", "s3://bucket/", "s3:///key", "http://b/k"])
def test_bad_uris_are_refused(uri):
    with pytest.raises(ValueError, match="s3://"):
        s3.ObjectRef.parse(uri)


def test_credentials_from_env():
    assert s3.Credentials.from_env({}) is None
    c = s3.Credentials.from_env({"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert c == s3.Credentials("AKID", "s3cr3t", None)
    assert "s3cr3t" not in repr(c)
    with pytest.raises(ValueError, match="must both be set"):
        s3.Credentials.from_env({"AWS_ACCESS_KEY_ID": "AKID"})


def test_error_summary_reads_the_s3_error_body():
    body = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>The key does not exist.</Message></Error>"
    assert s3.error_summary(body) == "NoSuchKey: The key does not exist."
    assert s3.error_summary(b"not xml") == ""
