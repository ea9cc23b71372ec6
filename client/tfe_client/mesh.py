"""The party mesh of one deployment: identities, certificates and tfe-guard configs (docs/mesh.md).

One source for who may talk to whom, used by `tfe-worker local` and by the operator:
- identities (``server0..2``, ``coordinator``, ``share-gN``, ``endpoint``, ``operator``) and
  the TF device each one owns;
- a CA and leaf certificates (ECDSA P-256, the identity in the Subject CN and a DNS SAN);
- the tfe-guard config of each party: what it accepts from whom (gRPC methods, HTTP paths)
  and which loopback ports it forwards to which peer.
Pure functions: nothing here opens a socket or touches a file.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVERS: tuple[str, ...] = ("server0", "server1", "server2")
COORDINATOR = "coordinator"
ENDPOINT = "endpoint"
OPERATOR = "operator"
SHARE_PATTERN = "share-g*"
RECV_TENSOR = "/tensorflow.WorkerService/RecvTensor"

# The guard's TLS listeners on a cluster (pod IP); locally they are Unix sockets.
GUARD_GRPC_PORT = 5440
GUARD_HTTP_PORT = 5443
# Loopback ports of the coordinator-side processes (the same inside every namespace).
COORDINATOR_TF_PORT = 4450
SHARE_TF_PORT = 4460
RELAY_PORT = 8090

DEVICES: dict[str, str] = {
    **{s: f"/job:tfe/replica:0/task:{i}" for i, s in enumerate(SERVERS)},
    COORDINATOR: "/job:coordinator/replica:0/task:0",
    SHARE_PATTERN: "/job:share/replica:0/task:0",
}


def share_identity(generation: int) -> str:
    return f"share-g{generation}"


def matches(identity: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(identity, pattern) if pattern.endswith("*") else identity == pattern


# -- certificates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    """PEM certificate and PKCS#8 PEM private key."""

    cert: bytes
    key: bytes

    @property
    def not_after(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.cert).not_valid_after_utc

    @property
    def identity(self) -> str:
        cn = x509.load_pem_x509_certificate(self.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cn[0].value) if cn else ""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def make_ca(name: str, days: int = 365, now: dt.datetime | None = None) -> KeyPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    k = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tfe-mesh-ca {name}"[:64])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(k, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(k))


def issue(ca: KeyPair, identity: str, dns_names: Sequence[str] = (), days: int = 90,
          now: dt.datetime | None = None) -> KeyPair:
    """A leaf certificate for `identity` (CN and first DNS SAN), usable as TLS client and server."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the mesh CA key must be an EC key")
    k = _key()
    sans = [x509.DNSName(n) for n in dict.fromkeys([identity, *dns_names])]
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca_cert.subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(k))


# -- who may call what ----------------------------------------------------------------------------

# Answered by the guard itself (tfe_client.wire.GuardRefusals): what it refused, for the operator.
REFUSALS_PATH = "/guard/refusals"
# Answered by the guard itself: gRPC calls and message bytes per caller identity and method
# (docs/mesh.md); `make bench` reads rounds and bytes per party from it.
STATS_PATH = "/guard/stats"


def grpc_rules(owner: str) -> list[dict[str, Any]]:
    """What the guard in front of `owner`'s TF gRPC server admits.

    Workers fetch the tensors the protocol sends them (RecvTensor; the guard also checks that
    the tensor is addressed to the caller's own device). Only the coordinator and a share job
    drive execution on a worker (EagerService: CreateContext, Enqueue, RunComponentFunction, ...).
    Nobody drives the coordinator or a share job; workers only fetch tensors from them.
    """
    peers = [s for s in SERVERS if s != owner]
    if owner in SERVERS:
        return [{"identities": [*peers, COORDINATOR, SHARE_PATTERN], "methods": [RECV_TENSOR]},
                {"identities": [COORDINATOR, SHARE_PATTERN], "methods": ["*"]}]
    return [{"identities": list(SERVERS), "methods": [RECV_TENSOR]}]


def http_rules(owner: str) -> list[dict[str, Any]]:
    """What the guard in front of `owner`'s HTTP side admits (method, path prefix)."""
    probes = ["/healthz", "/readyz", "/metrics"]
    if owner in SERVERS:
        return [{"identities": [COORDINATOR], "methods": ["*"], "paths": ["/v1/", *probes]},
                {"identities": [SHARE_PATTERN], "methods": ["GET"], "paths": ["/readyz", "/v1/public-key"]},
                {"identities": [OPERATOR], "methods": ["GET"],
                 "paths": ["/v1/public-key", "/v1/models/", REFUSALS_PATH, STATS_PATH, *probes]}]
    if owner == COORDINATOR:
        return [{"identities": [ENDPOINT], "methods": ["*"], "paths": ["/"]},
                {"identities": [OPERATOR], "methods": ["GET"], "paths": [REFUSALS_PATH, STATS_PATH, *probes]}]
    return []


# -- addressing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ports:
    """Loopback ports, the same inside every party's network namespace.

    `coordinators`/`shares` are slots: a cluster has one of each per EncryptedModel; the local
    stack serves several models from the same three players, so it has a few.
    """

    tf: tuple[int, int, int]
    http: tuple[int, int, int]
    coordinators: tuple[int, ...] = (COORDINATOR_TF_PORT,)
    shares: tuple[int, ...] = (SHARE_TF_PORT,)
    relay: int = RELAY_PORT

    @classmethod
    def from_addresses(cls, tf: Sequence[str], http: Sequence[str], **kw: Any) -> Ports:
        def port(a: str) -> int:
            return int(a.rsplit(":", 1)[1])
        return cls((port(tf[0]), port(tf[1]), port(tf[2])), (port(http[0]), port(http[1]), port(http[2])), **kw)


Where = Callable[[str, str], str]  # (party, "grpc"|"http") -> "unix:/path" or "tcp:host:port"


def party(role: str, slot: int = 0) -> str:
    """The addressable name of a coordinator/share slot: "coordinator", "coordinator-1", "share", ..."""
    return role if slot == 0 else f"{role}-{slot}"


def unix_addressing(mesh_dir: str) -> tuple[Where, Where]:
    """Locally: every guard listens on Unix sockets in one directory (listen == dial)."""
    def at(name: str, kind: str) -> str:
        return f"unix:{mesh_dir}/{name}.{kind}.sock"
    return at, at


def tcp_addressing(host_of: Callable[[str], str]) -> tuple[Where, Where]:
    """On a cluster: guards listen on the pod IP; peers dial the pod's stable DNS name."""
    def port(kind: str) -> int:
        return GUARD_GRPC_PORT if kind == "grpc" else GUARD_HTTP_PORT

    def listen(name: str, kind: str) -> str:
        return f"tcp:0.0.0.0:{port(kind)}"

    def dial(name: str, kind: str) -> str:
        return f"tcp:{host_of(name)}:{port(kind)}"
    return listen, dial


@dataclass(frozen=True)
class Mesh:
    ports: Ports
    listen: Where
    dial: Where

    def _out(self, port: int, name: str, kind: str, expect: str) -> dict[str, Any]:
        return {"listen": f"127.0.0.1:{port}", "dial": self.dial(name, kind), "expect": expect}

    def guard_config(self, identity: str, pki: dict[str, str], slot: int = 0) -> dict[str, Any]:
        """The whole tfe-guard config of one party. `pki`: paths {"ca", "cert", "key"};
        `slot`: which coordinator/share slot a coordinator or share job occupies."""
        p = self.ports
        inbound: list[dict[str, Any]] = []
        outbound: list[dict[str, Any]] = []
        if identity in SERVERS:
            i = SERVERS.index(identity)
            inbound = [{"kind": "grpc", "listen": self.listen(identity, "grpc"), "backend": f"127.0.0.1:{p.tf[i]}",
                        "rules": grpc_rules(identity)},
                       {"kind": "http", "listen": self.listen(identity, "http"),
                        "backend": f"127.0.0.1:{p.http[i]}", "rules": http_rules(identity)}]
            outbound = [self._out(p.tf[j], s, "grpc", s) for j, s in enumerate(SERVERS) if j != i]
            outbound += [self._out(port, party("coordinator", k), "grpc", COORDINATOR)
                         for k, port in enumerate(p.coordinators)]
            outbound += [self._out(port, party("share", k), "grpc", SHARE_PATTERN) for k, port in enumerate(p.shares)]
        elif identity == COORDINATOR or matches(identity, SHARE_PATTERN):
            coord = identity == COORDINATOR
            name = party("coordinator" if coord else "share", slot)
            own = (p.coordinators if coord else p.shares)[slot]
            inbound = [{"kind": "grpc", "listen": self.listen(name, "grpc"), "backend": f"127.0.0.1:{own}",
                        "rules": grpc_rules(identity)}]
            if coord:
                inbound.append({"kind": "http", "listen": self.listen(name, "http"),
                                "backend": f"127.0.0.1:{p.relay}", "rules": http_rules(identity)})
            for j, s in enumerate(SERVERS):
                outbound += [self._out(p.tf[j], s, "grpc", s), self._out(p.http[j], s, "http", s)]
        elif identity == ENDPOINT:
            outbound = [self._out(p.relay, party("coordinator", slot), "http", COORDINATOR)]
        else:
            raise ValueError(f"no guard for identity {identity!r}")
        return {"identity": identity, **pki, "devices": dict(DEVICES), "inbound": inbound, "outbound": outbound}
