"""The README's recipe for your own CIFAR10 files, end to end on a tiny CIFAR-10 written in its real format.

Pre-train the two encoders on the pickles (``services.trainer --dataset cifar10``), then run the bench
(``jobs.bench --dataset cifar10``, the README's command at tiny sizes) and the main job (``jobs.run
--dataset cifar10``) on them over real services; a Fashion-MNIST encoder is refused with both shapes.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("services.encoder.server")

from jobs import bench, run  # noqa: E402
from services.trainer.__main__ import main as train_main  # noqa: E402

ROOT_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write_cifar10(root, per_batch: int = 40, test: int = 80) -> None:
    """CIFAR-10 python pickles: uint8 rows of 3072 (channel-major), labels 0..9."""
    rng = np.random.default_rng(0)
    for name in ROOT_FILES:
        n = test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, size=n)
        # class-dependent colour so that the tiny problem is learnable at all
        base = (labels[:, None] * 25 + rng.integers(0, 20, size=(n, 3072))).clip(0, 255)
        batch = {b"data": base.astype(np.uint8), b"labels": labels.tolist()}
        with open(root / name, "wb") as handle:
            pickle.dump(batch, handle)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    data = root / "cifar-10-batches-py"
    data.mkdir()
    _write_cifar10(data)
    models = {name: root / f"cifar-{name}.onnx" for name in ("standard", "robust")}
    # the README's recipe: the standard encoder first, then the robust one distilled from it
    recipes = {"standard": ["--lam", "0", "--penalty", "none"],
               "robust": ["--mode", "rrm", "--teacher", str(models["standard"]), "--lam", "0.2",
                          "--penalty", "scale_invariant"]}
    for name, recipe in recipes.items():
        rc = train_main(["--dataset", "cifar10", "--data-root", str(data), "--epochs", "1",
                         "--batch-size", "32", "--max-steps-per-epoch", "2", "--enc-channels", "4,8",
                         "--enc-strides", "2,2", "--enc-hidden", "16", "--feature-dim", "8", "--moco-k", "64",
                         *recipe, "--out-dir", str(root / f"train-{name}"),
                         "--no-progress", "--threads", "1", "--export", str(models[name])])
        assert rc == 0
    return root, data, models["robust"], models["standard"]


def test_trainer_takes_the_dataset_shape_and_records_it(cifar):
    _, _, model, _ = cifar
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["input"]["shape"] == ["batch", 3, 32, 32]
    assert card["data"]["dataset"] == "cifar10" and card["architecture"]["in_channels"] == 3
    assert 0 < card["architecture"]["std"] and 0 < card["architecture"]["mean"] < 1
    assert card["linear_probe_accuracy"] is not None and card["lipschitz_bound_l2"] > 0


def test_main_job_runs_on_your_own_cifar10(cifar):
    root, data, model, _ = cifar
    out = root / "out"
    assert run.main(["--model", str(model), "--dataset", "cifar10", "--data-root", str(data),
                     "--num-test", "3", "--num-train", "200", "--epochs", "2", "--noise-c", "1",
                     "--n0", "20", "--n", "500", "--out", str(out), "--cache-dir", str(root / "cache")]) == 0
    result = json.loads((out / "run.json").read_text())
    for method in ("bc-crown", "sc"):
        summary = result["methods"][method]
        assert summary["num_test"] == 3 and summary["queries_per_training_input"] == 1
        assert summary["queries_per_test_input"] <= 2
    assert (out / "run.png").stat().st_size > 0


def test_an_encoder_for_other_images_is_refused_with_both_shapes(cifar):
    root, data, _, _ = cifar
    with pytest.raises(ValueError, match=r"takes images \[1, 28, 28\] but cifar10 images are \[3, 32, 32\]"):
        run.main(["--model", "models/fmnist-robust.onnx", "--dataset", "cifar10", "--data-root", str(data),
                  "--num-test", "1", "--out", str(root / "refused"), "--cache-dir", str(root / "cache2")])


def test_the_readme_bench_command_runs_on_your_own_cifar10(cifar):
    """The README's bench command for CIFAR10 (default RoCL path and all), at tiny sizes: the Fashion-MNIST
    RoCL encoder is left out instead of stopping the bench on a shape mismatch."""
    root, data, robust, standard = cifar
    out = root / "bench"
    tiny = ["--num-train", "200", "--num-test", "2", "--noise-c", "1", "--image-sigmas", "0.25",
            "--epochs", "2", "--n0", "20", "--n", "300", "--seaas-num-test", "1", "--seaas-copies", "2",
            "--seaas-n", "200",
            "--ds-n", "60", "--denoiser-max-epochs", "1", "--denoiser-depth", "3", "--denoiser-channels", "4",
            "--reference-max-epochs", "1", "--reference-num-test", "1", "--reference-n", "100",
            "--lipschitz-max-epochs", "1", "--semantic-num-test", "1", "--perturb-method", "lipschitz",
            "--curve-method", "lipschitz", "--threads", "1", "--out", str(out),
            "--cache-dir", str(root / "bench-cache")]
    assert bench.main(["--dataset", "cifar10", "--data-root", str(data), "--robust-model", str(robust),
                       "--standard-model", str(standard), *tiny]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert sorted(result["models"]) == ["robust", "standard"]  # the 28x28 RoCL encoder is skipped
    by_key = {(r["pipeline"], r["encoder"]): r for r in result["rows"]}
    assert by_key[("REaaS-SC", "robust")]["n_test"] == 2 and by_key[("SEaaS-SC", "standard")]["n_test"] == 1
    assert by_key[(bench.LIPSCHITZ, "white-box CNN")]["n_test"] == 2
    assert all("certified_accuracy_0" in r and "sigma" in r for r in result["rows"])
    assert (out / "bench.png").stat().st_size > 0 and (out / "bench.md").is_file()
