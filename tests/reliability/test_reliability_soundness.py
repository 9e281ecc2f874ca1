"""Soundness suite, reduced: the attack is strong on a closed form, catches a planted unsound radius, and
finds no violation of the engine's radii for any method on a small conv encoder or for g∘f."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx_helpers import ort_features

from edge_client.mlp import feature_spread
from reliability.common import evaluation_images
from reliability.soundness import (
    METHODS,
    AttackSettings,
    SoundnessSettings,
    attack_feature_shift,
    classifier_soundness,
    encoder_soundness,
    make_pairs,
    semantic_soundness,
    summarize_pairs,
)
from services.perturb.engine import BoundEngine
from services.trainer.pgd import step_schedule


def test_step_schedule_anneals_from_initial_to_final():
    steps = step_schedule(100, 0.5, 0.005)
    assert steps.shape == (100,) and steps[0] == pytest.approx(0.5) and steps[-1] == pytest.approx(0.005)
    assert np.all(np.diff(steps) <= 0)


def test_pairs_are_seeded_and_in_range():
    rows, rf, clip = make_pairs(50, 20, 2.0, 0.03, 1.0, seed=4)
    again = make_pairs(50, 20, 2.0, 0.03, 1.0, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((rows, rf, clip), again, strict=True))
    assert rows.max() == 19 and np.all((rf >= 0.06) & (rf <= 2.0)) and 0 < clip.sum() < 50


def test_attack_reaches_the_exact_worst_case_of_a_linear_encoder(linear_onnx, linear_weight):
    """For f = W x the largest shift over the r-ball is ‖W‖₂ r: PGD must get there (reach ≈ 1)."""
    engine, served = BoundEngine.from_onnx(linear_onnx), ort_features(linear_onnx)
    _, images, _ = evaluation_images(6)
    exact = np.linalg.norm(linear_weight.astype(np.float64), 2)
    radius = np.full(6, 0.5)
    shifts = attack_feature_shift(engine, served, images, radius, np.zeros(6, bool), AttackSettings())
    np.testing.assert_array_less(shifts["shift_f64"], exact * 0.5 * (1 + 1e-6))
    assert np.all(shifts["shift_f64"] >= 0.98 * exact * 0.5), shifts["shift_f64"] / (exact * 0.5)
    # a planted radius 3% too large must be caught as a violation
    rf = np.full(6, exact * 0.5 / 1.03)
    assert summarize_pairs(rf, radius, shifts)["violations"] == 6
    # the engine's own radius for the same R_F is sound
    certified = engine.image_radius(images, rf, method="lipschitz", clip_to_pixel_box=False).image_radius
    again = attack_feature_shift(engine, served, images, certified, np.zeros(6, bool), AttackSettings())
    summary = summarize_pairs(rf, certified, again)
    assert summary["violations"] == 0 and summary["attack_reach"] > 0.98


def test_no_method_is_beaten_on_a_small_conv_encoder(stand_in_onnx):
    engine, served = BoundEngine.from_onnx(stand_in_onnx), ort_features(stand_in_onnx)
    _, images, _ = evaluation_images(12)
    spread = feature_spread(served(images))
    settings = SoundnessSettings(pairs=12, crown_pairs=2, attack=AttackSettings(steps=100, restarts=5))
    report = encoder_soundness(engine, served, images, spread, settings, log=lambda _: None)
    assert set(report) == set(METHODS)
    for method, row in report.items():
        assert row["violations"] == 0, (method, row)
        assert row["pairs"] == (2 if method == "crown" else 12)
        assert 0 < row["attack_reach"] < 1, (method, row)
        assert 0 < row["clip_pairs"] < row["pairs"] or method == "crown"


def test_semantic_ranges_are_not_beaten_on_a_small_conv_encoder(stand_in_onnx):
    engine, served = BoundEngine.from_onnx(stand_in_onnx), ort_features(stand_in_onnx)
    _, images, _ = evaluation_images(4)
    spread = feature_spread(served(images))
    settings = SoundnessSettings(semantic_pairs=4, semantic_grid=401)
    report = semantic_soundness(engine, served, images, spread, settings, log=lambda _: None)
    assert set(report) == {"brightness", "contrast"}
    for kind, row in report.items():
        assert row["pairs"] == 4 and row["violations"] == 0, (kind, row)
        assert 0.5 < row["attack_reach"] < 1, (kind, row)  # the grid gets close: the bound is tight


def test_semantic_grid_catches_a_planted_unsound_range(stand_in_onnx):
    """Double every certified range: the grid must then find shifts at or past R_F."""
    from services.perturb.semantic import SemanticCertifier

    engine, served = BoundEngine.from_onnx(stand_in_onnx), ort_features(stand_in_onnx)
    _, images, _ = evaluation_images(3)
    spread = feature_spread(served(images))
    certifier = SemanticCertifier(engine)
    report = semantic_soundness(
        engine, served, images, spread, SoundnessSettings(semantic_pairs=3, semantic_grid=401),
        log=lambda _: None, certify=lambda x, rf, kind: 2.0 * certifier.certify(x, rf, kind).parameter_radius)
    assert all(row["violations"] > 0 for row in report.values()), report


def test_full_classifier_keeps_its_prediction_inside_certified_radii(stand_in_onnx):
    from reaas.datasets import load_fashion_mnist

    engine, served = BoundEngine.from_onnx(stand_in_onnx), ort_features(stand_in_onnx)
    _, images, labels = evaluation_images(16)
    train_x, train_y = load_fashion_mnist("train")
    settings = SoundnessSettings(classifier_method="crown_ibp", attack=AttackSettings(steps=100, restarts=5))
    report = classifier_soundness(
        engine, served, images, labels, train_x[:1000], train_y[:1000], settings, log=lambda _: None
    )
    assert report["attacked"] > 0 and report["violations"] == 0
    assert report["closest_margin"] < 0


def test_attack_settings_meet_the_issue_minimums():
    settings = AttackSettings()
    assert settings.steps >= 100 and settings.restarts >= 5 and settings.initial_step > settings.final_step
    torch.manual_seed(0)  # nothing random above depends on the global torch generator
