"""SDK against fake servicers: retries, deadlines, auth, pinning, batch splitting, counting, TLS."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import numpy as np
import pytest
from edge_fakes import SHA_A, SHA_B, create_fake_server, linear_state

from edge_client.sdk import (
    ClientConfig,
    ClientError,
    EncoderClient,
    ModelMismatchError,
    ModelPin,
    PerturbClient,
    RetryPolicy,
)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 4, 4), dtype=np.float32)


class _Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_encode_matches_linear_encoder_and_counts(fake_state, fake_target):
    client = EncoderClient(ClientConfig(fake_target))
    images = _images(10)
    features = client.encode(images)
    np.testing.assert_allclose(features, fake_state.features(images), rtol=1e-6)
    assert client.usage.queries == 10
    encode_calls = fake_state.calls("Encode")
    assert len(encode_calls) == 1
    expected_request = sum(r.ByteSize() for r in encode_calls)
    assert client.usage.request_bytes == expected_request
    assert client.usage.response_bytes > 10 * 8 * 4
    client.close()


def test_batches_split_under_max_batch_size_and_message_size(fake_target, fake_state):
    fake_state.max_batch_size = 7
    client = EncoderClient(ClientConfig(fake_target))
    images = _images(20)
    np.testing.assert_allclose(client.encode(images), fake_state.features(images), rtol=1e-6)
    assert [c.images.shape[0] for c in fake_state.calls("Encode")] == [7, 7, 6]
    fake_state.requests.clear()
    small = EncoderClient(ClientConfig(fake_target, max_message_bytes=4096 + 5 * (64 + 32)))
    np.testing.assert_allclose(small.encode(images), fake_state.features(images), rtol=1e-6)
    sizes = [c.images.shape[0] for c in fake_state.calls("Encode")]
    assert sum(sizes) == 20 and max(sizes) <= 5
    assert small.usage.queries == 20


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.CANCELLED])
def test_retries_with_exponential_backoff_and_jitter(fake_state, fake_target, code):
    fake_state.failures["Encode"] = [code] * 3
    sleeps = _Sleeps()
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3, multiplier=2.0)
    client = EncoderClient(ClientConfig(fake_target, retry=policy), sleep=sleeps)
    client.encode(_images(2))
    assert len(fake_state.calls("Encode")) == 4
    assert client.usage.retries == 3 and client.usage.queries == 2  # failed attempts are not queries
    caps = [0.1, 0.2, 0.3]
    assert len(sleeps) == 3
    for delay, cap in zip(sleeps, caps, strict=True):
        assert cap / 2 <= delay <= cap


def test_gives_up_after_max_attempts(fake_state, fake_target):
    fake_state.failures["Encode"] = [grpc.StatusCode.UNAVAILABLE] * 10
    client = EncoderClient(ClientConfig(fake_target, retry=RetryPolicy(max_attempts=3)), sleep=_Sleeps())
    with pytest.raises(ClientError, match="UNAVAILABLE.*after 3 attempts"):
        client.encode(_images(1))
    assert len(fake_state.calls("Encode")) == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.PERMISSION_DENIED])
def test_other_errors_are_not_retried(fake_state, fake_target, code):
    fake_state.failures["Encode"] = [code]
    sleeps = _Sleeps()
    client = EncoderClient(ClientConfig(fake_target), sleep=sleeps)
    with pytest.raises(ClientError) as info:
        client.encode(_images(1))
    assert info.value.code == code and not sleeps
    assert len(fake_state.calls("Encode")) == 1


def test_deadline_exceeded_is_reported_not_retried(fake_state, fake_target):
    fake_state.delay_s = 0.5
    client = EncoderClient(ClientConfig(fake_target, timeout_s=0.1), sleep=_Sleeps())
    with pytest.raises(ClientError) as info:
        client.model_info()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_api_key_travels_as_bearer_metadata(fake_state, fake_target):
    fake_state.api_key = "s3cret"
    with pytest.raises(ClientError) as info:
        EncoderClient(ClientConfig(fake_target, api_key="wrong")).encode(_images(1))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    client = EncoderClient(ClientConfig(fake_target, api_key="s3cret"))
    assert client.encode(_images(1)).shape == (1, 8)


def test_pins_sha_on_first_contact_and_sends_it(fake_state, fake_target):
    client = EncoderClient(ClientConfig(fake_target))
    client.encode(_images(3))
    assert client.pin.sha256 == SHA_A
    assert all(c.model_sha256 == SHA_A for c in fake_state.calls("Encode"))


def test_refuses_a_model_swap(fake_state, fake_target):
    client = EncoderClient(ClientConfig(fake_target))
    client.encode(_images(1))
    fake_state.sha256 = SHA_B  # the server now serves another model
    with pytest.raises(ModelMismatchError):
        client.encode(_images(1))


def test_shared_pin_refuses_mixing_encoder_and_perturb_models(fake_target):
    other = linear_state(sha256=SHA_B)
    server, port = create_fake_server(other)
    try:
        pin = ModelPin()
        encoder = EncoderClient(ClientConfig(fake_target), pin=pin)
        encoder.encode(_images(1))
        perturb = PerturbClient(ClientConfig(f"127.0.0.1:{port}"), pin=pin)
        with pytest.raises(ModelMismatchError):
            perturb.f2i(_images(1), np.array([0.5]))
        assert not other.calls("F2IPerturb")
    finally:
        server.stop(None)


def test_expected_sha_mismatch_is_refused_before_any_query(fake_state, fake_target):
    client = EncoderClient(ClientConfig(fake_target, expected_model_sha256=SHA_B))
    with pytest.raises(ModelMismatchError):
        client.encode(_images(1))
    assert not fake_state.calls("Encode")


def test_f2i_and_curve_against_exact_linear_answers(fake_state, fake_target):
    perturb = PerturbClient(ClientConfig(fake_target))
    images = _images(5)
    feature_radii = np.array([0.0, 0.1, 0.5, 1.0, 2.0])
    radii, methods = perturb.f2i(images, feature_radii)
    np.testing.assert_allclose(radii, feature_radii / fake_state.sigma_max, rtol=1e-12)
    assert methods == ["lipschitz"] * 5 and perturb.usage.queries == 5
    curve = perturb.curve(images, num_radii=16, min_radius=0.01, max_radius=1.0)
    np.testing.assert_allclose(curve.features, fake_state.features(images), rtol=1e-6)
    assert len(curve.curves) == 5 and curve.curves[0][0].shape == (16,)
    assert perturb.usage.queries == 10
    with pytest.raises(ValueError):
        perturb.f2i(images[:1], np.array([-1.0]))
    assert perturb.f2i(images, feature_radii).search_completed and curve.search_completed


def test_truncated_server_answers_are_surfaced(fake_state, fake_target):
    """search_completed is True only when every batch's answer ran to completion."""
    fake_state.max_batch_size = 2  # three batches per call
    fake_state.search_completed = False
    perturb = PerturbClient(ClientConfig(fake_target))
    images, feature_radii = _images(5), np.full(5, 0.5)
    answer = perturb.f2i(images, feature_radii)
    assert answer.search_completed is False and answer.image_radius.shape == (5,)
    assert perturb.curve(images).search_completed is False
    assert perturb.semantic(images, feature_radii).search_completed is False
    fake_state.search_completed = True
    assert perturb.semantic(images, feature_radii).search_completed is True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_tls_with_root_certificates(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    state = linear_state()
    server, port = create_fake_server(state, server_credentials=credentials)
    try:
        config = ClientConfig(f"localhost:{port}", tls=True, root_certificates_pem=cert.read_bytes())
        with EncoderClient(config) as client:
            assert client.encode(_images(2)).shape == (2, 8)
    finally:
        server.stop(None)
