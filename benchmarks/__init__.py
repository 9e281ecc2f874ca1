"""Repository benchmarks, run as ``python -m benchmarks.<name>``; not part of any service image.

- ``encoder_serving``: Feature-API throughput, raw ONNX Runtime vs served, dynamic batching vs none;
- ``perturb_engine``: the bound engine in-process: latency, radii, certificate gap, memory per method;
- ``perturb_served``: served F2IPerturb latency against the in-process engine;
- ``semantic``: semantic (brightness / contrast) certificates against the ℓ2 conversion.

``serving`` starts a service for them in a child process.
"""
