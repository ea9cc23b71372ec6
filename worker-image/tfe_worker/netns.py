"""python -m tfe_worker.netns CMD...: run CMD in a private network namespace with loopback up.

Used by the test suite and benchmarks: TF's gRPC servers listen on every interface, so local
players are kept off the host's interfaces. Falls back to running CMD directly (with a
warning) where no namespace can be made.
"""

from __future__ import annotations

import os
import sys

from tfe_worker.local import isolation_cmd, loopback_up


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--inside"]:
        loopback_up()
        os.environ["TFE_NETNS"] = "1"
        os.execvp(args[1], args[1:])
    if not args:
        print("usage: python -m tfe_worker.netns CMD [ARGS...]", file=sys.stderr)
        return 2
    iso = isolation_cmd()
    if iso is None:
        print("tfe_worker.netns: no private network namespace available; running on the host network",
              file=sys.stderr)
        os.execvp(args[0], args)
    os.execvp(iso[0], [*iso, sys.executable, "-m", "tfe_worker.netns", "--inside", *args])


if __name__ == "__main__":
    sys.exit(main())
