"""Feature-API: serves the ONNX encoder over gRPC (reaas.v1.Encoder and KServe v2 inference)."""
