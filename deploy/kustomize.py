"""A small kustomize renderer for the features deploy/k8s uses, for machines without kubectl.

Supported: ``resources`` (files and kustomization directories), ``namespace``, ``labels`` (metadata labels
only), ``images`` and ``patches`` holding JSON 6902 operations. Anything else raises
:class:`UnsupportedKustomization`, so the manifests cannot drift into features this renderer would get wrong;
the tests compare its output with ``kubectl kustomize`` wherever kubectl exists.

    python -m deploy.kustomize deploy/k8s/overlays/cpu | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
# Kinds the namespace transformer leaves alone (the cluster-scoped ones a REaaS manifest could hold).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "RuntimeClass", "IngressClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService",
}

Manifest = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: str | Path) -> list[Manifest]:
    """The manifests ``kubectl kustomize directory`` would print, as dicts (order not guaranteed)."""
    directory = Path(directory)
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = set(spec) - _FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: unsupported fields {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            manifests += render(path)
        else:
            manifests += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, manifests)
    if "namespace" in spec:
        for manifest in manifests:
            if manifest["kind"] == "Namespace":  # kustomize renames the Namespace object itself
                manifest["metadata"]["name"] = spec["namespace"]
            elif manifest["kind"] not in CLUSTER_SCOPED:
                manifest.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for group in spec.get("labels", []):
        if group.get("includeSelectors") or group.get("includeTemplates") or group.get("fields"):
            raise UnsupportedKustomization(f"{directory}: labels support only plain pairs")
        for manifest in manifests:
            manifest.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
    for image in spec.get("images", []):
        for manifest in manifests:
            _set_image(manifest, image)
    return manifests


def _apply_patch(directory: Path, patch: dict, manifests: list[Manifest]) -> None:
    if set(patch) - {"path", "patch", "target"} or "target" not in patch:
        raise UnsupportedKustomization(f"{directory}: patches need a target and a path or an inline patch")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise UnsupportedKustomization(f"{directory}: only JSON 6902 patches (a list of operations)")
    target = patch["target"]
    if set(target) - {"kind", "name"}:
        raise UnsupportedKustomization(f"{directory}: patch targets select by kind and name only")
    matched = [m for m in manifests if all(re.fullmatch(target[k], m["kind"] if k == "kind" else
                                                        m["metadata"]["name"]) for k in target)]
    if not matched:
        raise UnsupportedKustomization(f"{directory}: patch target {target} matches nothing")
    for manifest in matched:
        for operation in operations:
            json_patch(manifest, operation)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def json_patch(document: Any, operation: dict) -> None:
    """Apply one RFC 6902 ``add``/``replace``/``remove`` operation to ``document`` in place."""
    op, tokens = operation["op"], _pointer(operation["path"])
    if op not in {"add", "replace", "remove"}:
        raise UnsupportedKustomization(f"JSON patch op {op!r}")
    parent = document
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    value = copy.deepcopy(operation.get("value"))
    if isinstance(parent, list):
        if op == "add":
            parent.insert(len(parent) if last == "-" else int(last), value)
        elif op == "replace":
            parent[int(last)] = value
        else:
            del parent[int(last)]
    elif op == "add":
        parent[last] = value
    else:
        if last not in parent:
            raise KeyError(f"{operation['path']}: nothing to {op}")
        if op == "replace":
            parent[last] = value
        else:
            del parent[last]


def _image_name(image: str) -> str:
    """The image reference without its digest or tag."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _set_image(node: Any, image: dict) -> None:
    """Rewrite matching ``image`` fields in every containers/initContainers list below ``node``."""
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                current = container.get("image")
                if isinstance(current, str) and _image_name(current) == image["name"]:
                    container["image"] = _new_image(current, image)
        else:
            _set_image(value, image)


def _new_image(current: str, image: dict) -> str:
    name = image.get("newName", image["name"])
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    rest = current[len(_image_name(current)):]
    return name + rest


def main(argv: list[str] | None = None) -> int:
    """Print the rendered manifests of a kustomization directory as a YAML stream."""
    parser = argparse.ArgumentParser(prog="python -m deploy.kustomize", description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="a directory holding kustomization.yaml")
    args = parser.parse_args(argv)
    yaml.safe_dump_all(render(args.directory), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
