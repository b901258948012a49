#!/usr/bin/env python3
"""Turns CustomResourceDefinition YAML files into the JSON schemas tests/deploy/test_manifests.py validates
against: each served version's openAPIV3Schema, descriptions dropped (most of the size), gzipped, named
`<kind>-<group>-<version>.json.gz` (lower case). The sources and their pinned versions are in README.md here.

    python3 tests/deploy/schemas/extract_crd_schemas.py CRD.yaml [CRD.yaml ...]
"""

import gzip
import json
import sys
from pathlib import Path

import yaml


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(paths):
    out_dir = Path(__file__).resolve().parent
    for path in paths:
        for crd in (d for d in yaml.safe_load_all(Path(path).read_text()) if d):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
            for v in crd["spec"]["versions"]:
                if not v.get("served", True):
                    continue
                schema = strip(v["schema"]["openAPIV3Schema"])
                out = out_dir / f"{kind.lower()}-{group}-{v['name']}.json.gz"
                # mtime=0: the same CRD always gives the same bytes.
                with gzip.GzipFile(out, "wb", mtime=0) as f:
                    f.write(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode())
                print(f"{path}: {kind} {group}/{v['name']} -> {out.name} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
