#!/usr/bin/env python3
"""Write a single-layer image as a `docker save`-format tarball, without docker or a registry.

Used for the tiny images the cluster itself needs (pause, coredns); `ctr images import` reads it.
  mkimage.py OUT.tar --tag NAME:TAG --entrypoint '["/pause"]' [--user 65535] SRC:DEST[:MODE] ...
"""
import argparse
import hashlib
import io
import json
import tarfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--entrypoint", default="[]")
    ap.add_argument("--cmd", default="[]")
    ap.add_argument("--user", default="")
    ap.add_argument("files", nargs="+", help="SRC:DEST[:MODE]")
    a = ap.parse_args()

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for spec in a.files:
            src, dest, *mode = spec.split(":")
            dest = dest.lstrip("/")
            parts = dest.split("/")[:-1]
            for i in range(len(parts)):
                d = "/".join(parts[: i + 1])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    t.addfile(ti)
            data = open(src, "rb").read()
            ti = tarfile.TarInfo(dest)
            ti.size, ti.mode = len(data), int(mode[0], 8) if mode else 0o755
            t.addfile(ti, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": json.loads(a.entrypoint) or None,
            "Cmd": json.loads(a.cmd) or None,
            "User": a.user,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/cluster/mkimage.py"}],
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_name = diff_id[7:] + "/layer.tar"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [a.tag], "Layers": [layer_name]}]).encode()
    with tarfile.open(a.out, "w") as out:
        for name, data in ((cfg_name, cfg), (layer_name, layer_bytes), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))


if __name__ == "__main__":
    main()
