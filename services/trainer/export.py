"""Export an encoder to ONNX (dynamic batch, 'images' -> 'features'), check parity, write its model card."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from reaas.onnx_export import torch_to_onnx
from services.trainer.encoders import ConvEncoder

PARITY_TOL = 1e-4
PARITY_INPUTS = 64


def fold_batchnorm(encoder: ConvEncoder) -> ConvEncoder:
    """Copy of the encoder with every eval-mode BatchNorm2d folded into the conv before it."""
    folded = copy.deepcopy(encoder).eval()
    layers = list(folded.net)
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
            conv = out[-1]
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            new = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
            )
            bias = conv.bias if conv.bias is not None else torch.zeros_like(layer.running_mean)
            with torch.no_grad():
                new.weight.copy_(conv.weight * scale[:, None, None, None])
                new.bias.copy_((bias - layer.running_mean) * scale + layer.bias)
            out[-1] = new
        else:
            out.append(layer)
    folded.net = nn.Sequential(*out)
    return folded


def strip_parametrizations(module: nn.Module) -> nn.Module:
    """Bake any torch parametrizations (spectral_norm, AOL) into plain weights, in place.

    Safe on a deep copy: the copy shares torch's generated ``Parametrized*`` class with its original, and
    removing a parametrization deletes the property from that class, which would break the original too; each
    module here gets its own copy of the class first.
    """
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            shared = type(sub)
            namespace = {k: v for k, v in shared.__dict__.items() if k not in ("__dict__", "__weakref__")}
            sub.__class__ = type(shared.__name__, shared.__bases__, namespace)
            for name in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    return module


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(encoder: ConvEncoder, path: str | Path, seed: int = 0) -> float:
    """Write the encoder as ONNX (``reaas.onnx_export``: opset 17, dynamic batch) and return the
    onnxruntime-vs-torch max abs diff on 64 inputs.

    Raises ``RuntimeError`` when the difference exceeds 1e-4.
    """
    import onnxruntime as ort

    # spectral-norm parametrizations are baked into plain weights first: exported as they are, the
    # parametrization's power iteration would be traced into the graph
    model = strip_parametrizations(fold_batchnorm(encoder)).cpu().float().eval()
    cfg = encoder.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(torch_to_onnx(model, (cfg.in_channels, cfg.image_size, cfg.image_size)))
    _inline_identities(tmp)
    os.replace(tmp, path)
    gen = torch.Generator().manual_seed(seed)
    probe = torch.rand(PARITY_INPUTS, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["features"], {"images": probe.numpy()})
    with torch.no_grad():
        torch_out = encoder.eval()(probe).numpy()
    diff = float(np.abs(onnx_out - torch_out).max())
    if not diff <= PARITY_TOL:
        raise RuntimeError(f"ONNX parity check failed for {path}: max abs diff {diff:.3g} > {PARITY_TOL}")
    return diff


def _inline_identities(path: Path) -> None:
    """Replace Identity nodes (the exporter emits them for deduplicated, equal initializers) by copies.

    The bound engine's contract lists the allowed operators; Identity is not among them.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy_ = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            model.graph.initializer.append(copy_)
        else:
            keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


def hardware_description(device: torch.device, world_size: int) -> dict:
    """Where training ran: device, process count, CPU model and torch thread count."""
    return {
        "device": str(device),
        "processes": world_size,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def write_model_card(onnx_path: str | Path, card: dict) -> Path:
    """Write ``<model>.json`` beside the ONNX file with its sha256 and size added."""
    onnx_path = Path(onnx_path)
    full = {
        "name": onnx_path.stem,
        "file": onnx_path.name,
        "model_sha256": sha256_file(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        **card,
    }
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return card_path


@torch.no_grad()
def normalize_feature_scale(encoder: ConvEncoder, images: torch.Tensor, batch_size: int = 1024) -> float:
    """Rescale the last Linear in place so the features of ``images`` have RMS spread 1; return the factor.

    The Lipschitz bound scales by the same factor, so L/S is unchanged; it only keeps exported features O(1).
    A parametrized last layer (AOL: invariant to the scale of its raw weight) is baked into a plain one first.
    """
    from services.trainer.spectral import feature_spread

    encoder.eval()
    feats = torch.cat([encoder(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    factor = 1.0 / float(feature_spread(feats.double()))
    last = strip_parametrizations([m for m in encoder.net if isinstance(m, nn.Linear)][-1])
    last.weight.mul_(factor)
    if last.bias is not None:
        last.bias.mul_(factor)
    return factor
