"""The bench's row building end to end over real services on a tiny exported CNN encoder.

Checks the row schema, that every query count is exactly what the protocol says (REaaS: 1 per training
input, 2 per test input or 1 when R_F = 0 skips F2IPerturb, 1 on the one-query path; SEaaS-SC: k per training
input and n0 + n per test input) and that the ratios are computed from the measured bytes of the rows.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("services.encoder.server")
pytest.importorskip("services.perturb.server")

from onnx_helpers import export_encoder  # noqa: E402

from edge_client.metrics import average_certified_radius  # noqa: E402
from jobs import bench, report  # noqa: E402

TINY = replace(bench.FULL, num_train=200, num_test=3, noise_c=(1.0,), image_sigmas=(0.25, 0.5), epochs=2,
               n0=20, n=400, selection_images=100, validation_size=2, selection_n=50, seaas_num_test=2,
               seaas_copies=3, seaas_n=300, ds_n=100, denoiser_max_epochs=1, denoiser_depth=3,
               denoiser_channels=4, reference_max_epochs=1, reference_num_test=2, reference_n=200,
               lipschitz_max_epochs=1, perturb_method="lipschitz", curve_method="lipschitz",
               perturb_timeout_s=30.0, semantic_num_test=2, threads=1)


def _tiny_encoder(path):
    """A tiny conv encoder [B, 1, 28, 28] -> [B, 8] exported to ONNX, with a minimal model card."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 13 * 13, 8)).eval()
    return export_encoder(module, path, {"note": "test"})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    config = replace(TINY, out=root / "out", cache_dir=root / "cache")
    model = _tiny_encoder(root / "tiny.onnx")
    rows, curves, raw = bench.encoder_rows("tiny", model, config, log=lambda _: None)
    return config, rows, curves, raw


def test_row_schema(built):
    config, rows, curves, raw = built
    assert [r["pipeline"] for r in rows] == list(bench.PIPELINES)
    for row in rows:
        assert set(bench.COLUMNS) <= row.keys() and row["encoder"] == "tiny"
    impossible = rows[0]
    assert all(impossible[c] is None for c in bench.COLUMNS[2:])
    assert "| SEaaS-BC | tiny | — |" in report.markdown_table([impossible], bench.COLUMNS)
    for row in rows[1:]:
        accuracies = [row[report.radius_key(r)] for r in bench.RADII]
        assert accuracies == sorted(accuracies, reverse=True) and 0 <= row["acr"]
        assert row["client_seconds_per_test_input"] >= 0 and row["server_seconds_per_test_input"] >= 0
    assert {r["pipeline"]: r["n_test"] for r in rows[1:]} == {
        "SEaaS-SC": 2, "SEaaS-DS": 2, "REaaS-BC": 3, "REaaS-SC": 3, "REaaS-SC one-query": 3}
    assert set(curves) == set(bench.PIPELINES[1:])
    by_name = {r["pipeline"]: r for r in rows}
    assert by_name["REaaS-BC"]["sigma"] is None and by_name["REaaS-SC"]["sigma"] == raw["sigma_f"] > 0
    for name in ("SEaaS-SC", "SEaaS-DS"):  # sigma chosen from the grid on validation, tuning queries counted
        choice = raw["choices"][name]
        assert by_name[name]["sigma"] == choice["sigma"] in config.image_sigmas
        assert [e["sigma"] for e in choice["table"]] == list(config.image_sigmas)
        assert by_name[name]["tuning_queries_per_train_input"] == choice["queries"] / config.num_train > 0
    for row in rows[1:]:
        assert row["certified_accuracy_0"] is not None and not math.isnan(row["clean_accuracy"])


def test_clean_accuracy_is_the_base_classifier_on_the_clean_image(built):
    config, rows, _, raw = built
    for name in ("SEaaS-SC", "SEaaS-DS"):
        certified = raw[name]["rows"]
        assert all("clean_prediction" in r for r in certified)
        assert raw[name]["summary"]["clean_accuracy"] == pytest.approx(
            np.mean([r["clean_prediction"] == r["label"] for r in certified]))
        assert raw[f"{name} clean queries"] == config.seaas_num_test

def test_query_counts_follow_the_protocol(built):
    config, rows, _, raw = built
    by_name = {r["pipeline"]: r for r in rows}
    for name in ("REaaS-BC", "REaaS-SC"):
        assert by_name[name]["queries_per_train_input"] == 1
        for row in raw[name]["rows"]:  # F2IPerturb is skipped when the client certified nothing
            assert row["queries"] == (2 if row["feature_radius"] > 0 else 1)
    assert all(row["queries"] == 1 for row in raw["REaaS-SC one-query"]["rows"])
    assert by_name["REaaS-SC one-query"]["queries_per_test_input"] == 1
    assert by_name["SEaaS-SC"]["queries_per_train_input"] == config.seaas_copies  # all num_train images
    assert all(row["queries"] == config.n0 + config.seaas_n for row in raw["SEaaS-SC"]["rows"])
    assert by_name["SEaaS-SC"]["queries_per_test_input"] == config.n0 + config.seaas_n
    assert by_name["SEaaS-DS"]["queries_per_train_input"] == 1
    assert by_name["SEaaS-DS"]["queries_per_test_input"] == config.n0 + config.ds_n


def test_ratios_come_from_measured_bytes(built):
    _, _, _, raw = built
    ratios = bench.compare({"robust": raw, "standard": raw})
    same = ratios["robust"]
    indices = set(same["test_indices"])
    assert indices == {int(r["index"]) for r in raw["SEaaS-SC"]["rows"]}
    reaas = [r for r in raw["REaaS-SC"]["rows"] if int(r["index"]) in indices]
    seaas = raw["SEaaS-SC"]["rows"]
    reaas_bytes = sum(r["bytes"] for r in reaas) / len(reaas)
    seaas_bytes = sum(r["bytes"] for r in seaas) / len(seaas)
    assert reaas_bytes > 0 and seaas_bytes > 100 * reaas_bytes
    assert same["bytes_ratio"] == pytest.approx(seaas_bytes / reaas_bytes)
    assert same["queries_ratio"] == pytest.approx(
        (TINY.n0 + TINY.seaas_n) / (sum(r["queries"] for r in reaas) / len(reaas)))
    # The tiny untrained encoder certifies nothing (ACR 0): its ACR ratios must be undefined (None), never a
    # 1, 0 or inf that reads as a result, and 0 vs 0 meets no ACR goal. Positive ACRs: the next test.
    for name, key in (("REaaS-BC", "bc"), ("REaaS-SC", "sc")):
        acr = raw[name]["summary"]["acr"]
        assert ratios[f"robust_over_standard_acr_{key}"] == (1.0 if acr > 0 else None)
        assert ratios[f"robust_over_standard_acr_{key}_goal_met"] is False  # equal ACRs: not 10x
    reaas_acr = same["reaas_sc_acr"]
    assert same["acr_ratio_reaas_over_seaas"] == (None if same["seaas_sc_acr"] == 0 else pytest.approx(
        reaas_acr / same["seaas_sc_acr"]))
    assert same["acr_goal_met"] is (reaas_acr > 0 and reaas_acr >= same["seaas_sc_acr"])
    assert ratios["robust_over_others"] == {}
    third = bench.compare({"robust": raw, "standard": raw, "rocl": raw})["robust_over_others"]
    assert set(third) == {"rocl"} and set(third["rocl"]) == {"bc", "sc"}
    assert all(line.startswith("- ") for line in bench.ratio_lines(ratios))
    assert f"on the {len(indices)} test inputs 0, 20" in bench.ratio_lines(ratios)[0]


def _raw_with_acr(bc: float, sc: float, seaas_sc: float = 0.0) -> dict:
    """The parts of one encoder's raw results that :func:`bench.compare` reads, with the given ACRs."""
    same = {"REaaS-SC": {"queries_per_test_input": 2.0, "bytes_per_test_input": 3e3, "acr": sc},
            "SEaaS-SC": {"queries_per_test_input": 420.0, "bytes_per_test_input": 1e6, "acr": seaas_sc},
            "test_indices": [0, 20]}
    return {"same_inputs": same, "REaaS-BC": {"summary": {"acr": bc}}, "REaaS-SC": {"summary": {"acr": sc}}}


def test_acr_ratios_are_computed_from_positive_acr_and_undefined_at_zero():
    raw = {"robust": _raw_with_acr(0.3, 0.6, seaas_sc=0.2), "standard": _raw_with_acr(0.02, 0.1)}
    ratios = bench.compare(raw)
    assert ratios["robust_over_standard_acr_bc"] == pytest.approx(15.0)
    assert ratios["robust_over_standard_acr_sc"] == pytest.approx(6.0)
    assert ratios["robust_over_standard_acr_bc_goal_met"] is True
    assert ratios["robust_over_standard_acr_sc_goal_met"] is False  # 6x < 10x
    assert ratios["robust"]["acr_ratio_reaas_over_seaas"] == pytest.approx(3.0)
    assert ratios["robust"]["acr_goal_met"] is True
    lines = bench.ratio_lines(ratios)
    assert "- robust / standard ACR, REaaS-BC: 15 (goal >= 10: met)" in lines
    assert "- robust / standard ACR, REaaS-SC: 6 (goal >= 10: NOT met)" in lines

    # A zero denominator: the ratio is undefined (None, shown as "—"), not inf and not 0.
    zero = bench.compare({"robust": _raw_with_acr(0.3, 0.6), "standard": _raw_with_acr(0.0, 0.0)})
    assert zero["robust_over_standard_acr_bc"] is None and zero["robust_over_standard_acr_sc"] is None
    assert zero["robust"]["acr_ratio_reaas_over_seaas"] is None
    assert "- robust / standard ACR, REaaS-BC: — (goal >= 10: met)" in bench.ratio_lines(zero)
    # Nothing certified on either side: undefined ratios and no goal met by 0 >= 0.
    none = bench.compare({"robust": _raw_with_acr(0.0, 0.0), "standard": _raw_with_acr(0.0, 0.0)})
    for key in ("bc", "sc"):
        assert none[f"robust_over_standard_acr_{key}"] is None
        assert none[f"robust_over_standard_acr_{key}_goal_met"] is False
    assert none["robust"]["acr_ratio_reaas_over_seaas"] is None and none["robust"]["acr_goal_met"] is False
    assert "- robust / standard ACR, REaaS-SC: — (goal >= 10: NOT met)" in bench.ratio_lines(none)


def test_semantic_rows_cost_one_query_per_certified_input(built):
    config, _, _, raw = built
    for kind in ("brightness", "contrast"):
        rows = raw["semantic"][kind]["rows"]
        assert [r["index"] for r in rows] == [r["index"] for r in raw["REaaS-BC"]["rows"][:2]]
        for row in rows:
            certified = row["prediction"] >= 0 and row["feature_radius"] > 0
            assert row["queries"] == (1 if certified else 0) and row["semantic"] >= 0
            assert row["certified"] == max(row["semantic"], row["l2_implied"])  # the l2 rows are unclipped
    table = bench.semantic_table({"tiny": raw})
    assert [(r["encoder"], r["kind"], r["n_test"]) for r in table] == [("tiny", "brightness", 2),
                                                                       ("tiny", "contrast", 2)]
    assert "synbench_score" not in bench.compare({"robust": raw, "standard": raw})  # the card has none
    markdown = bench.semantic_markdown(table)
    assert markdown.count("| encoder | kind |") == 2 and "certified_0.2" in markdown  # contrast's levels


def test_white_box_rows_are_journaled(built):
    config, *_ = built
    logged = []
    rows, curves = bench.reference_rows(config, log=logged.append)
    sigma_rows = [f"{bench.REFERENCE}, sigma {s:g}" for s in config.image_sigmas]
    assert [r["pipeline"] for r in rows] == [*sigma_rows, bench.REFERENCE_BEST]
    for row in rows[:-1]:
        correct, radii = curves[row["pipeline"]]
        assert row["queries_per_test_input"] == 0 and row["bytes_per_test_input"] == 0
        assert row["n_test"] == config.reference_num_test == len(radii)
        assert math.isclose(row["acr"], average_certified_radius(correct, radii))
        assert row["sigma"] in config.image_sigmas
    best = rows[-1]
    for r in bench.RADII:
        key = report.radius_key(r)
        assert best[key] == max(row[key] for row in rows[:-1])
    assert best["acr"] is None and best["clean_accuracy"] is None
    assert sum("CNN:" in line for line in logged) == len(config.image_sigmas)
    logged.clear()
    again, _ = bench.reference_rows(config, log=logged.append)  # resumed: nothing trained or certified
    assert again == rows and logged == []
    row, (correct, radii) = bench.lipschitz_row(config, log=logged.append)
    assert row["n_test"] == config.num_test and row["queries_per_test_input"] == 0
    assert math.isclose(row["acr"], average_certified_radius(correct, radii))
    assert row["clean_accuracy"] >= row["certified_accuracy_0"]
    assert bench.lipschitz_row(config, log=logged.append)[0] == row and sum("AOL" in x for x in logged) == 1


def test_long_training_steps_leave_per_epoch_checkpoints_in_the_journals(built):
    config, *_ = built
    journals = config.out / "journals"
    bench.reference_rows(config, log=lambda _: None)  # journaled: trains only if an earlier test did not
    row, curve = bench.lipschitz_row(config, log=lambda _: None)
    sigmas = len(config.image_sigmas)
    assert len(list((journals / "tiny").glob("mlp-SEaaS-SC-*.npz"))) == 1
    for baseline in ("SEaaS-SC", "SEaaS-DS"):
        assert len(list((journals / "tiny").glob(f"select-{baseline}-*-mlp-sigma*.npz"))) == sigmas
    assert len(list(journals.glob("dncnn-*.ckpt"))) == sigmas + 1  # one per selection sigma, the final one
    assert len(list(journals.glob("reference-cnn-*.ckpt"))) == sigmas
    assert len(list(journals.glob("lipschitz-cnn-*.ckpt"))) == 1
    for path in journals.glob("lipschitz-cnn-*.jsonl"):  # killed after training: the checkpoint is the CNN
        path.unlink()
    logged = []
    again, again_curve = bench.lipschitz_row(config, log=logged.append)
    assert again["acr"] == row["acr"] and np.array_equal(again_curve[1], curve[1])
    assert sum("AOL" in line for line in logged) == 1


def test_encoders_for_other_images_are_refused_or_skipped(tmp_path):
    model = _tiny_encoder(tmp_path / "tiny.onnx")
    other = tmp_path / "other.onnx"
    torch.manual_seed(0)
    export_encoder(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8)).eval(), other,
                   {"note": "test"}, input_shape=(3, 32, 32))
    assert bench.onnx_input_shape(model) == (1, 28, 28) and bench.onnx_input_shape(other) == (3, 32, 32)
    logged = []
    config = replace(TINY, robust_model=model, standard_model=model, rocl_model=str(other))
    assert list(bench.choose_encoders(config, log=logged.append)) == ["robust", "standard"]
    assert "takes images [3, 32, 32], not fashion-mnist's [1, 28, 28]" in logged[0]
    assert list(bench.choose_encoders(replace(config, rocl_model=str(model)), log=logged.append)) == [
        "robust", "standard", "rocl"]
    with pytest.raises(ValueError, match=r"takes images \[3, 32, 32\] but fashion-mnist images are"):
        bench.choose_encoders(replace(config, standard_model=other))


def test_synbench_scores_are_compared_with_acr(built):
    _, _, _, raw = built

    def encoder(score: float, acr_bc: float, acr_sc: float) -> dict:
        return {**raw, "synbench_score": score,
                "REaaS-BC": {**raw["REaaS-BC"], "summary": {**raw["REaaS-BC"]["summary"], "acr": acr_bc}},
                "REaaS-SC": {**raw["REaaS-SC"], "summary": {**raw["REaaS-SC"]["summary"], "acr": acr_sc}}}

    ranked = {"robust": encoder(2e-3, 0.3, 0.9), "standard": encoder(6e-6, 0.001, 0.003),
              "rocl": encoder(9e-6, 0.002, 0.004)}
    ratios = bench.compare(ranked)
    assert ratios["synbench_score"] == {"robust": 2e-3, "standard": 6e-6, "rocl": 9e-6}
    assert ratios["synbench_ranks_like_acr"] is True
    lines = bench.ratio_lines(ratios)
    assert any(line.startswith("- SynBench score") and "rocl 9e-06" in line for line in lines)
    assert sum(line.startswith("- robust: on the ") for line in lines) == 1
    assert any(line.startswith("- robust / rocl ACR") for line in lines)
    swapped = {**ranked, "rocl": encoder(5e-6, 0.002, 0.004)}  # scored below standard, certifies more
    assert bench.compare(swapped)["synbench_ranks_like_acr"] is False
    tied = {**ranked, "rocl": encoder(5e-6, 0.001, 0.003)}  # equal ACR: no order to contradict
    assert bench.compare(tied)["synbench_ranks_like_acr"] is True


def test_cli_flags_override_the_preset():
    args = bench.build_parser().parse_args(["--quick", "--num-test", "7", "--noise-c", "0.5,2",
                                            "--image-sigmas", "0.12,0.5"])
    config = bench.config_from_args(args)
    assert config.num_test == 7 and config.noise_c == (0.5, 2.0) and config.n == bench.QUICK.n
    assert config.image_sigmas == (0.12, 0.5)
    assert bench.config_from_args(bench.build_parser().parse_args([])) == bench.FULL
    assert np.all([f"--{name}" in bench.build_parser().format_help()
                   for name in ("quick", "seaas-copies", "curve-method", "perturb-method")])


def test_parts_and_encoders_flags_select_what_runs(tmp_path):
    parser = bench.build_parser()
    config = bench.config_from_args(parser.parse_args(["--parts", "seaas-sc, smoothed-cnn",
                                                       "--encoders", "robust"]))
    assert config.parts == ("seaas-sc", "smoothed-cnn") and config.encoders == ("robust",)
    assert bench.config_from_args(parser.parse_args([])).parts == bench.PARTS
    for flag, value in (("--parts", "seaas"), ("--parts", ","), ("--encoders", "robust,teacher")):
        with pytest.raises(SystemExit, match=f"{flag}: "):
            bench.config_from_args(parser.parse_args([flag, value]))
    model = _tiny_encoder(tmp_path / "tiny.onnx")
    both = replace(TINY, robust_model=model, standard_model=model, rocl_model=str(model))
    assert list(bench.choose_encoders(replace(both, encoders=("robust",)), log=lambda _: None)) == ["robust"]
    assert list(bench.choose_encoders(replace(both, encoders=("standard", "rocl")), log=lambda _: None)) == [
        "standard", "rocl"]


def test_a_service_part_alone_gives_its_rows_only(tmp_path):
    config = replace(TINY, parts=("seaas-sc",), out=tmp_path / "out", cache_dir=tmp_path / "cache")
    rows, curves, raw = bench.encoder_rows("tiny", _tiny_encoder(tmp_path / "tiny.onnx"), config,
                                           log=lambda _: None)
    assert [r["pipeline"] for r in rows] == ["SEaaS-BC", "SEaaS-SC"] and set(curves) == {"SEaaS-SC"}
    assert rows[1]["sigma"] in config.image_sigmas and rows[1]["n_test"] == config.seaas_num_test
    assert "REaaS-SC" not in raw and "same_inputs" not in raw
    assert bench.compare({"tiny": raw}) == {}  # nothing to compare without REaaS-SC on the same inputs


def test_reaas_sc_is_compared_with_the_best_smoothed_cnn_on_the_cnns_inputs():
    def row(index: int, correct: bool, radius: float) -> dict:
        return {"index": index, "label": 1, "prediction": 1 if correct else 2, "radius": radius,
                "clean_prediction": 1, "queries": 2, "bytes": 10}

    # REaaS-SC on inputs 0, 20, 40 (40 is not one of the CNNs' inputs and must not count)
    raw = {"REaaS-SC": {"rows": [row(0, True, 1.2), row(20, True, 0.3), row(40, True, 5.0)]}}
    best = {report.radius_key(r): v for r, v in zip(bench.RADII, (1.0, 0.5, 0.5, 0.0, 0.0, 0.0), strict=True)}
    best["best_sigma_per_radius"] = {f"{r:g}": 0.25 for r in bench.RADII}
    out = bench.versus_smoothed_cnn({"robust": raw}, best, [0, 20])["robust"]
    assert out["test_indices"] == [0, 20]
    assert out["per_radius"]["0"] == {"reaas_sc": 1.0, "best_smoothed_cnn": 1.0, "cnn_sigma": 0.25}
    assert out["per_radius"]["0.25"]["reaas_sc"] == 1.0 and out["per_radius"]["0.5"]["reaas_sc"] == 0.5
    assert out["per_radius"]["1"]["reaas_sc"] == 0.5 and out["per_radius"]["1.5"]["reaas_sc"] == 0.0
    assert out["beats_at_every_r_from_0.25"] is False  # a tie at r = 0.5 and both 0 at r = 1.5
    assert "ahead at every r >= 0.25: NO" in bench.ratio_lines({"versus_smoothed_cnn": {"robust": out}})[0]
    # fewer REaaS inputs than the CNNs': no like-for-like comparison
    assert bench.versus_smoothed_cnn({"robust": raw}, best, [0, 20, 60]) == {}
