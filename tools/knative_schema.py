"""Derive the small JSON Schema ``src/zerostart/fleet/schemas/knative-service-v1.json``.

Input: Knative Serving's published CRD for ``services.serving.knative.dev`` (the file
``config/core/300-resources/service.yaml`` of knative/serving, also inside each release's
``serving-crds.yaml``). Output: its ``v1`` ``openAPIV3Schema`` as JSON Schema, with

- descriptions dropped;
- ``additionalProperties: false`` on every object that the CRD does not mark
  ``x-kubernetes-preserve-unknown-fields`` (the API server would prune an unknown field,
  so a manifest that has one is wrong);
- ``x-kubernetes-int-or-string`` as ``integer | string``, ``nullable`` as ``| null``;
- the subtrees ``deploy`` never writes (volumes, affinity, security contexts, status, ...)
  kept by name but not by content, to keep the file small.

Run: ``python tools/knative_schema.py service.yaml --commit SHA > src/zerostart/fleet/schemas/knative-service-v1.json``
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

PRUNE = {
    "affinity", "volumes", "initContainers", "topologySpreadConstraints", "dnsConfig",
    "hostAliases", "tolerations", "securityContext", "envFrom", "volumeMounts",
    "startupProbe", "imagePullSecrets", "status", "traffic", "valueFrom", "grpc",
}  # fmt: skip


def convert(node: dict[str, Any], name: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = node.get("type")
    if name in PRUNE:
        return {"type": kind} if kind else {}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif kind:
        out["type"] = [kind, "null"] if node.get("nullable") else kind
    for key in ("enum", "required", "format", "minimum", "maximum"):
        if key in node:
            out[key] = node[key]
    if "properties" in node:
        out["properties"] = {k: convert(v, k) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    elif "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
        out["additionalProperties"] = convert(node["additionalProperties"])
    if "items" in node:
        out["items"] = convert(node["items"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crd", help="service.yaml of knative/serving")
    ap.add_argument("--commit", default="", help="knative/serving commit the file came from")
    args = ap.parse_args()
    with open(args.crd) as f:
        crd = yaml.safe_load(f)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = convert(version["schema"]["openAPIV3Schema"])
    schema = {
        "$comment": (
            "Derived by tools/knative_schema.py from knative/serving "
            "config/core/300-resources/service.yaml (CRD services.serving.knative.dev, v1)"
            + (f" at commit {args.commit}" if args.commit else "")
        ),
        **schema,
    }
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
