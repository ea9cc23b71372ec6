"""tfe-worker: player | share | serve | local."""

from __future__ import annotations

import logging
import os
import sys

from tfe_worker import logs

USAGE = """usage: tfe-worker [--log-format text|json] COMMAND [ARGS]

commands:
  player NAME --config F --state DIR    a TF Encrypted player (tf gRPC + HTTP side)
  share --config F --model M --name N   secret-share a Keras model across the players
  reshare --config F --name N --from-generation G --generation N (--recover serverL | --refresh)
                                        a new share generation from an existing one, without the model
  serve --config F --name N --port P    the coordinator and client endpoint (--relay-port: relay API)
  endpoint --relay H:P --name N --port P  the client endpoint alone (no TF), relaying to serve
  local --model M --name N --port P     all of the above on this machine
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0].startswith("--log-format"):  # before the command: every subprocess inherits it
        fmt = args[0].split("=", 1)[1] if "=" in args[0] else (args[1] if len(args) > 1 else "")
        args = args[1:] if "=" in args[0] else args[2:]
        if fmt not in logs.FORMATS or not args:
            print(f"tfe-worker: --log-format must be one of {', '.join(logs.FORMATS)}, then a command",
                  file=sys.stderr)
            return 2
        os.environ["TFE_LOG_FORMAT"] = fmt
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        logs.setup()
    except ValueError as e:
        print(f"tfe-worker: TFE_LOG_FORMAT: {e}", file=sys.stderr)
        return 2
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    cmd, rest = args[0], args[1:]
    if cmd == "player":
        from tfe_worker.player import main as run
    elif cmd == "share":
        from tfe_worker.share import main as run
    elif cmd == "reshare":
        from tfe_worker.reshare import main as run
    elif cmd == "serve":
        from tfe_worker.serve import main as run
    elif cmd == "endpoint":
        from tfe_worker.endpoint import main as run
    elif cmd == "local":
        from tfe_worker.local import main as run
    else:
        print(f"tfe-worker: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
