"""tfe-client: private predictions against a tfe-operator endpoint.

The client encodes its input in fixed point, splits it into 2-of-3 replicated shares,
encrypts each worker's share pair to that worker's public key and sends one request.
Nothing it sends reveals the input to the endpoint, a proxy or a log.
"""

from tfe_client.client import Client, ModelInfo
from tfe_client.errors import InconsistentSharesError, ProtocolError, RemoteError

__all__ = ["Client", "InconsistentSharesError", "ModelInfo", "ProtocolError", "RemoteError"]
