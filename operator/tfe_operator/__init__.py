"""tfe-operator: the EncryptedModel operator (kopf).

Layout: ``settings`` (typed settings from env), ``api`` (group/version/names),
``spec`` (typed spec with the CRD's defaults), ``builders`` (pure manifest builders),
``observe`` (pure parsing of observed objects), ``reconcile`` (pure state machine),
``kube`` (the one I/O layer: idempotent apply/delete, reads, HTTP probes),
``handlers`` (thin kopf handlers), ``metrics``, ``main`` (console script).
"""

__version__ = "0.1.0"
