"""Offline robust pre-training of encoders (MoCo v2 + spectral-norm penalty, RoCL, RRM) and ONNX export."""
