"""`edgetl select` and `edgetl build --backbone auto` on real digits, two real candidates.

One build with ``--backbone auto`` (64 px, a 120-image sample) runs the whole estimate
once: embeddings, probe, LogME, export + int8 quantization per candidate, latency in fresh
processes. The other tests reuse its cache folder, so they pay only the latency timing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.errors import ConfigError

CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1")
SIZE = 64
SAMPLE = 120


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    from edgetl.modalities.image import write_digits

    return write_digits(tmp_path_factory.mktemp("sel_digits") / "data", per_class=20, seed=3)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("select_work")


@pytest.fixture(scope="module")
def auto_build(small_digits, work, tmp_path_factory):
    from edgetl.workstation.onnx_export import ExportConfig
    from edgetl.workstation.pipeline import BuildConfig, build
    from edgetl.workstation.quantization import QuantizeConfig
    from edgetl.workstation.selection import SelectConfig
    from edgetl.workstation.training import TrainConfig

    out = tmp_path_factory.mktemp("sel_build") / "bundle"
    return build(small_digits, "x86-ort-int8", out, BuildConfig(
        train=TrainConfig(backbone="auto", image_size=SIZE),
        export=ExportConfig(exporter="torchscript", opset=17, samples=16),
        quantize=QuantizeConfig(max_drop=0.05),
        # a budget with room for a shared 2-core machine's noise (the target's 15 ms is met
        # at 64 px on a quiet one; p90 over 0.3 s under a load of 6 came to 13 ms)
        select=SelectConfig(backbones=CANDIDATES, image_size=SIZE, sample=SAMPLE, work_dir=work, budget_ms=60.0,
                            bench_duration=0.3, bench_repeats=1),
        run_bench=False,
    ))


def test_auto_build_takes_the_recommendation_within_budget(auto_build):
    sel = auto_build.selection
    assert [s["stage"] for s in auto_build.stages][:2] == ["select", "train"]
    assert [c["backbone"] for c in sel.candidates] == list(CANDIDATES)
    info = json.loads((auto_build.run_dir / "run.json").read_text())
    assert sel.recommended in CANDIDATES and info["backbone"] == sel.recommended
    chosen = next(c for c in sel.candidates if c["backbone"] == sel.recommended)
    assert chosen["p90_ms"] <= sel.budget_ms == 60.0 and chosen["meets_budget"]
    assert chosen["precision_executed"] == "int8" and chosen["peak_rss_mb"] <= sel.budget_memory_mb
    fits = [c for c in sel.candidates if c["meets_budget"]]
    assert chosen["probe_accuracy"] == max(c["probe_accuracy"] for c in fits)
    for c in sel.candidates:  # real estimates on real digits: far above chance (0.1)
        assert 0.5 < c["probe_accuracy"] <= 1 and 0.3 < c["knn_accuracy"] <= 1 and np.isfinite(c["logme"])
        assert c["input_size"] == SIZE and c["n_sample"] == SAMPLE
    assert sel.cost["seconds"] > 0 and set(sel.cost["per_backbone"]) == set(CANDIDATES)
    s = auto_build.summary
    assert s["backbone"] == sel.recommended and sel.recommended in s["backbone_choice"]
    assert "budget" in s["backbone_choice"] and sel.finetune["backbone"] == sel.recommended
    from edgetl.workstation.pipeline import summary_rows

    assert ("why this backbone (edgetl select)", s["backbone_choice"]) in summary_rows(s)


def test_knn_ceiling_is_scikit_learns(auto_build, small_digits):
    """The k-NN ceiling equals scikit-learn's cosine k-NN on the same embeddings and folds."""
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    from edgetl.workstation.backbones import create_backbone
    from edgetl.workstation.embedding import embed_paths
    from edgetl.workstation.probe_solver import _stratified_folds
    from edgetl.workstation.selection import _knn_accuracy

    paths = [sorted((small_digits / str(c)).iterdir())[i] for c in range(10) for i in range(SAMPLE // 10)]
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), SAMPLE // 10)
    for name in CANDIDATES:
        bb = create_backbone(name)
        X = embed_paths(bb.module, paths, bb.preprocess.with_input_size(SIZE), torch.device("cpu"))[0]
        X = X.astype(np.float64)
        yy = rng.permutation(y)  # any labelling: the rule is what is compared
        fold = _stratified_folds(yy, 5, 0)
        ref = sum(int(np.sum(KNeighborsClassifier(5, metric="cosine", algorithm="brute")
                             .fit(X[fold != k], yy[fold != k]).predict(X[fold == k]) == yy[fold == k]))
                  for k in range(5)) / len(yy)
        assert _knn_accuracy(X, yy, 5, fold) == pytest.approx(ref)


def test_a_budget_nothing_meets_is_one_line_naming_the_fastest(auto_build, small_digits, work, tmp_path, capsys):
    plot = tmp_path / "select.png"
    code = main(["select", str(small_digits), "--target", "x86-ort-int8", "--backbones", ",".join(CANDIDATES),
                 "--image-size", str(SIZE), "--sample", str(SAMPLE), "--work", str(work), "--budget-ms", "0.001",
                 "--bench-duration", "0.3", "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("edgetl select: error: no candidate meets the 0.001 ms p90 budget")
    assert "the fastest, efficientnet_lite" in last and "ms p90" in last
    assert "budget p90 0.001 ms" in captured.out  # the table came first
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recommend_takes_the_most_accurate_within_budget_and_memory():
    from edgetl.workstation.selection import recommend

    def c(name, acc, p90, mb=100.0):
        return {"backbone": name, "probe_accuracy": acc, "p90_ms": p90, "peak_rss_mb": mb, "n_sample": 100}

    rows = [c("a", 0.80, 2.0), c("b", 0.90, 6.0), c("c", 0.95, 12.0, 500.0), c("d", 0.90, 4.0)]
    assert recommend(rows, 10.0, 300.0)[0] == "d"  # b and d tie on accuracy: the faster
    assert recommend(rows, 20.0, None)[0] == "c"
    assert recommend(rows, 20.0, 300.0)[0] == "d"  # c is over the memory budget
    name, why = recommend(rows, 1.0, 300.0, "board")
    assert name is None and "the fastest, a, takes 2 ms p90" in why


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbones=()), "at least one"),
    (dict(backbones=("a", "a")), "twice"),
    (dict(budget_ms=0), "positive"),
    (dict(folds=1), "folds"),
])
def test_bad_options_are_clear(kwargs, message):
    from edgetl.workstation.selection import SelectConfig

    with pytest.raises(ConfigError, match=message):
        SelectConfig(**kwargs)


def test_unknown_candidate_is_one_line(small_digits, tmp_path, capsys):
    code = main(["select", str(small_digits), "--target", "x86-ort-int8", "--backbones", "efficientnet_lite9",
                 "--work", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "did you mean" in err.strip().splitlines()[-1]
