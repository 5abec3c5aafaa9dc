"""The main job end to end on the tiny config, and the deployment commands around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nasbnn.bundle import load_bundle, read_bundle_info
from nasbnn.cli import main
from nasbnn.errors import CheckpointError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("main")
    assert main(["run", "--config", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out


def test_summary_has_the_required_keys(run):
    s = json.loads((run / "summary.json").read_text())
    assert {"family", "largest_top1", "gap_over_random_median"} <= set(s)
    assert s["family"] and all({"arch", "mops", "top1"} <= set(f) for f in s["family"])
    assert 0 <= s["largest_top1"] <= 100
    assert s["largest_top1"] == max(s["family"], key=lambda f: f["mops"])["top1"]
    gaps = [f["gap_over_random_median"] for f in s["family"] if "gap_over_random_median" in f]
    assert s["gap_over_random_median"] == pytest.approx(sum(gaps) / len(gaps))
    assert Path(s["plot"]).is_file()
    assert set(s["seconds"]) == {"supernet", "search", "family", "random_baseline", "finetune", "deploy"}
    assert all(v >= 0 for v in s["seconds"].values())
    for name in ("history.jsonl", "pareto.json", "family.csv", "pareto.png"):
        assert (run / "search" / name).is_file()


def test_largest_member_is_finetuned_and_its_bundle_reproduces_the_accuracy(run, capsys):
    s = json.loads((run / "summary.json").read_text())
    largest = max(s["family"], key=lambda f: f["mops"])
    assert [f["arch"] for f in s["family"] if "finetuned_top1" in f] == [largest["arch"]]  # finetune_members: 1
    assert s["largest_finetuned_top1"] == largest["finetuned_top1"] and 0 <= largest["finetuned_top1"] <= 100
    assert largest["direct_top1"] == largest["top1"] == s["largest_top1"]
    info = read_bundle_info(largest["finetuned_bundle"])
    assert info["arch"] == largest["arch"] and info["source"]["finetuned_from"] == largest["bundle"]
    # pipeline.finetune_epochs=1 of 160 generated training images (the hold-out is generated apart) // batch 16
    assert info["source"]["steps"] == 160 // 16
    assert info["metrics"]["test_top1"] == pytest.approx(largest["finetuned_top1"])
    out = run / "eval-ft.json"
    assert main(["eval", "--bundle", largest["finetuned_bundle"], "--config", "tiny", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == pytest.approx(largest["finetuned_top1"])
    capsys.readouterr()


def test_interrupted_finetuning_resumes_and_changed_settings_start_over(run, tmp_path):
    from nasbnn.config import RunConfig, load_config
    from nasbnn.pipeline import _finetune_members

    s = json.loads((run / "summary.json").read_text())
    largest = max(s["family"], key=lambda f: f["mops"])
    member = {k: largest[k] for k in ("arch", "bundle", "mops", "top1")}
    dest = Path(largest["finetuned_bundle"]).parent
    (dest / "finetune_summary.json").unlink()  # as if stopped after the last checkpoint
    cfg = load_config(RunConfig, "tiny", [f"out={run}"])
    logs: list[str] = []
    fam = [dict(member)]
    _finetune_members(cfg, run, fam, progress=False, log=logs.append)  # resumes: no step left to train
    assert fam[0]["finetuned_top1"] == pytest.approx(largest["finetuned_top1"]) and "fine-tuned" in logs[-1]
    assert read_bundle_info(dest / "bundle")["source"]["steps"] == 10
    _finetune_members(cfg, run, fam, progress=False, log=logs.append)
    assert "reusing the finished fine-tuning" in logs[-1]
    for epochs, steps in ((0.2, 2), (0.3, 3)):  # elsewhere: other settings start over instead of resuming
        cfg = load_config(RunConfig, "tiny", [f"out={run}", f"pipeline.finetune_epochs={epochs}"])
        fam = [dict(member)]
        _finetune_members(cfg, tmp_path, fam, progress=False, log=logs.append)
        assert "reusing" not in logs[-1]
        assert read_bundle_info(fam[0]["finetuned_bundle"])["source"]["steps"] == steps


def test_every_member_is_packed_and_timed(run, tmp_path, capsys):
    import numpy as np

    from nasbnn.engine import PackedModel

    s = json.loads((run / "summary.json").read_text())
    assert s["bench"]["batch"] == 1 and s["bench"]["repeats"] == 2 and s["bench"]["threads"] >= 1
    for f in s["family"]:
        for prefix in ("", "finetuned_") if "finetuned_bundle" in f else ("",):
            path = Path(f[prefix + "packed"])
            assert path.parent == Path(f[prefix + "bundle"]) and f[prefix + "packed_bytes"] == path.stat().st_size
            packed = PackedModel.load(path)
            assert str(packed.arch) == f["arch"] and packed.input.dataset == "synthetic"
            assert packed.nbytes < f[prefix + "packed_bytes"]  # the arrays plus the JSON header
        assert f["packed_mb"] == pytest.approx(f["packed_bytes"] / 1e6)
        assert f["float_mb"] == pytest.approx(packed.float_bytes / 1e6)
        assert 0 < f["engine_ms_min"] <= f["engine_ms"] and 0 < f["float_ms_min"] <= f["float_ms"]
        assert f["engine_speedup"] == pytest.approx(f["float_ms"] / f["engine_ms"])
        assert f["engine_agreement"]["unexplained"] == 0
    # the packed file runs under nasbnn infer with the bundle's logits
    f = s["family"][-1]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    capsys.readouterr()
    assert main(["infer", "--packed", f["packed"], str(tmp_path / "x.npy"), "--top-k", "5", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    with torch.no_grad():
        ref = load_bundle(f["bundle"])(x).numpy()
    for p, row in zip(preds, ref):
        got = np.array([t["logit"] for t in sorted(p["top"], key=lambda t: t["class"])])
        np.testing.assert_allclose(got, row, rtol=1e-4, atol=1e-4 * float(np.abs(row).max()))


def test_family_bundles_reload_and_reproduce_their_accuracy(run):
    s = json.loads((run / "summary.json").read_text())
    f = s["family"][-1]
    net = load_bundle(f["bundle"])
    info = read_bundle_info(f["bundle"])
    assert info["arch"] == f["arch"] and info["cost"]["upstream"]["mops"] == pytest.approx(f["mops"])
    assert info["metrics"]["test_top1"] == pytest.approx(f["top1"])
    out = run / "eval.json"
    assert main(["eval", "--bundle", f["bundle"], "--config", "tiny", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == pytest.approx(f["top1"])
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 5)


def test_rerun_reuses_the_finished_stages(run, capsys):
    before = (run / "search" / "pareto.json").read_text()
    assert main(["run", "--config", "tiny", "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reusing the finished checkpoint" in out
    assert "reusing the finished fine-tuning" in out
    assert (run / "search" / "pareto.json").read_text() == before


def test_export_family_bucket_and_errors(run, tmp_path, capsys):
    ck = str(run / "checkpoint.pt")
    pareto = run / "search" / "pareto.json"
    bucket = json.loads(pareto.read_text())["family"][0]["bucket"]
    dest = tmp_path / "one"
    assert main(["export", "--config", "tiny", "--checkpoint", ck, "--arch", f"{pareto}@{bucket}", "--to", str(dest),
                 "--evaluate", f"out={run}"]) == 0
    assert (dest / "model.safetensors").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad"
    code = main(["export", "--config", "tiny", "--checkpoint", ck, "--arch", "c8k3g1.1|c999k3g1.1|c16k3g1.1",
                 "--to", str(bad)])
    assert code == 2 and "unknown width 999" in capsys.readouterr().err
    assert not bad.exists()
    code = main(["export", "--config", "tiny", "--checkpoint", ck, "--arch", f"{pareto}@123", "--to", str(bad)])
    assert code == 2 and "no family member in bucket 123" in capsys.readouterr().err
    assert not bad.exists()


def test_finetune_resumes_and_writes_a_bundle(run, tmp_path):
    s = json.loads((run / "summary.json").read_text())
    b = s["family"][0]["bundle"]
    dest = tmp_path / "ft"
    assert main(["finetune", "--config", "tiny", "--bundle", b, "--to", str(dest), "--max-steps", "3",
                 "--no-progress"]) == 0
    assert main(["finetune", "--config", "tiny", "--bundle", b, "--to", str(dest), "--resume", "--no-progress"]) == 0
    info = read_bundle_info(dest / "bundle")
    assert info["source"]["steps"] == 10 and "test_top1" in info["metrics"]


def test_bundle_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a nasbnn bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text('{"format": "nasbnn.bundle", "format_version": 99}')
    with pytest.raises(CheckpointError, match="format version 99"):
        load_bundle(tmp_path)


def test_export_packed_and_onnx_formats_and_bench_a_bundle(run, tmp_path, capsys):
    import numpy as np

    from nasbnn.engine import BinaryEngine, PackedModel

    ck = str(run / "checkpoint.pt")
    dest = tmp_path / "packed"
    assert main(["export", "--config", "tiny", "--checkpoint", ck, "--largest", "--to", str(dest),
                 "--format", "packed", f"out={run}"]) == 0
    assert "MB packed vs" in capsys.readouterr().out
    net = load_bundle(dest)
    packed = PackedModel.load(dest / "model.nbp")
    assert str(packed.arch) == read_bundle_info(dest)["arch"]
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x).numpy()
    got = BinaryEngine(packed, threads=1)(x.numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    dest = tmp_path / "onnx"
    assert main(["export", "--config", "tiny", "--checkpoint", ck, "--smallest", "--to", str(dest),
                 "export.format=onnx", f"out={run}"]) == 0  # the format from the config
    assert (dest / "model.onnx").stat().st_size > 1000
    capsys.readouterr()
    assert main(["bench", "--bundle", str(dest), "--batch", "1", "--repeats", "2", "--warmup", "1", "--threads", "1",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["weights"].startswith("trained") and res["end_to_end_speedup"] > 0
    assert main(["bench", "--bundle", str(dest), "--largest"]) == 2
    assert "not both" in capsys.readouterr().err


def test_summary_table_marks_stages_that_did_not_run():
    from nasbnn.pipeline import format_summary

    member = {"mops": 12.5, "top1": 80.0, "arch": "c4k3g1.1", "packed_bytes": 2048}
    text = format_summary({"family": [member], "bench": {"threads": None, "repeats": 0}, "plot": "p.png",
                           "supernet": "run/checkpoint.pt"})
    row = text.splitlines()[2].split()
    assert "nan" not in text.lower()
    assert row[:3] == ["12.500", "80.000", "-"] and row[5] == "2.0" and row[6:8] == ["-", "-"]
