#!/usr/bin/env python3
"""Writes a single-layer OCI image archive (an OCI image layout in a tar, as `ctr images import`
reads it) without a registry, a daemon or Docker.

Deterministic: entries are sorted, owned by 0:0 unless told otherwise, with mtime 0, and the layer
is uncompressed, so the same inputs give the same manifest digest (printed on stdout).

usage: ociimage.py OUT.tar REF [options]
  --file SRC:DEST[:MODE]   copy a host file (octal MODE, default: the source's permission bits)
  --dir DEST:MODE          an empty directory (e.g. tmp:1777)
  --symlink DEST:TARGET    a symbolic link
  --text DEST:MODE:TEXT    a file with TEXT as its content (\\n for newlines)
  --entrypoint JSON  --cmd JSON  --user USER  --env K=V (repeatable)  --label K=V (repeatable)
"""
import argparse
import hashlib
import io
import json
import os
import sys
import tarfile


def entries(args):
    """(path, kind, payload, mode) for every layer entry, parents first."""
    out = {}

    def parents(path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            out.setdefault(p, ("dir", None, 0o755))

    for spec in args.file:
        src, dest, *mode = spec.split(":")
        dest = dest.strip("/")
        parents(dest)
        with open(src, "rb") as f:
            data = f.read()
        m = int(mode[0], 8) if mode else os.stat(src).st_mode & 0o7777
        out[dest] = ("file", data, m)
    for spec in args.text:
        dest, mode, text = spec.split(":", 2)
        dest = dest.strip("/")
        parents(dest)
        out[dest] = ("file", text.replace("\\n", "\n").encode(), int(mode, 8))
    for spec in args.dir:
        dest, mode = spec.split(":")
        dest = dest.strip("/")
        parents(dest)
        out[dest] = ("dir", None, int(mode, 8))
    for spec in args.symlink:
        dest, target = spec.split(":", 1)
        dest = dest.strip("/")
        parents(dest)
        out[dest] = ("symlink", target, 0o777)
    return sorted(out.items())


def layer_tar(items):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, (kind, payload, mode) in items:
            ti = tarfile.TarInfo(path)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode = 0, 0, 0, "", "", mode
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload
                t.addfile(ti)
            else:
                ti.size = len(payload)
                t.addfile(ti, io.BytesIO(payload))
    return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("ref")
    for opt in ("file", "dir", "symlink", "text", "env", "label"):
        ap.add_argument("--" + opt, action="append", default=[])
    ap.add_argument("--entrypoint", default="null")
    ap.add_argument("--cmd", default="null")
    ap.add_argument("--user", default="")
    args = ap.parse_args()

    layer = layer_tar(entries(args))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
            "Entrypoint": json.loads(args.entrypoint),
            "Cmd": json.loads(args.cmd),
            "User": args.user,
            "WorkingDir": "/",
            "Labels": dict(kv.split("=", 1) for kv in args.label),
        },
        "rootfs": {"type": "layers", "diff_ids": [blob(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/real-node/ociimage.py"}],
    }
    config_b = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config_b), "size": len(config_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": blob(layer), "size": len(layer)}],
    }
    manifest_b = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    tag = args.ref.rsplit(":", 1)[1] if ":" in args.ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest_b), "size": len(manifest_b),
            # containerd names the imported image from the first; other tools read the second.
            "annotations": {"io.containerd.image.name": args.ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    }
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
             ("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode())]
    files += [("blobs/sha256/" + blob(d)[7:], d) for d in (layer, config_b, manifest_b)]
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as t:
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            t.addfile(ti)
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            t.addfile(ti, io.BytesIO(data))
    print(blob(manifest_b))


if __name__ == "__main__":
    sys.exit(main())
