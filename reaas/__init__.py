"""REaaS shared core: the gRPC contract (``reaas.v1``), tensor wire codec and dataset loaders.

Importable without torch or onnxruntime, so the edge client can depend on it.
"""
