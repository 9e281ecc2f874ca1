"""The one table of F2IPerturb bounding methods and image-space norms: name ↔ proto value.

Every CLI's ``choices``, the SDK, the servers and the benches read it, so a method the server accepts
is a method every front end offers. Names are the engine's (``services/perturb/engine``).
"""

from __future__ import annotations

from reaas.v1 import common_pb2

# name -> proto value, cheapest first; "auto" is the best sound method that fits the deadline
PERTURB_METHODS: dict[str, int] = {
    "auto": common_pb2.AUTO,
    "lipschitz": common_pb2.LIPSCHITZ,
    "local_lipschitz": common_pb2.LOCAL_LIPSCHITZ,
    "ibp": common_pb2.IBP,
    "crown_ibp": common_pb2.CROWN_IBP,
    "crown": common_pb2.CROWN,
}
METHOD_NAMES: dict[int, str] = {value: name for name, value in PERTURB_METHODS.items()}
# the explicit bounding methods (all but "auto")
BOUND_METHODS: tuple[str, ...] = tuple(m for m in PERTURB_METHODS if m != "auto")

NORMS: dict[str, int] = {"l2": common_pb2.L2, "linf": common_pb2.LINF}
NORM_NAMES: dict[int, str] = {value: name for name, value in NORMS.items()}


def method_to_proto(name: str) -> int:
    """The proto value of a method name; ValueError naming the choices for an unknown one."""
    try:
        return PERTURB_METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {tuple(PERTURB_METHODS)}, got {name!r}") from None


def norm_to_proto(name: str) -> int:
    """The proto value of a norm name; ValueError naming the choices for an unknown one."""
    try:
        return NORMS[name]
    except KeyError:
        raise ValueError(f"norm must be one of {tuple(NORMS)}, got {name!r}") from None
