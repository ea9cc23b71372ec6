"""tfe-operator worker runtime (Python 3.10, TF 2.9.1, tf-encrypted 0.9.1)."""

__version__ = "0.1.0"
