"""Importing official checkpoints and search results; the 132-integer codec."""

import random

import pytest
import torch

from nasbnn.errors import CheckpointError, InvalidArch
from nasbnn.models import SuperBNN
from nasbnn.presets import create_space
from nasbnn.upstream import (
    arch_from_upstream,
    arch_to_upstream,
    convert_upstream_state_dict,
    load_upstream_checkpoint,
    load_upstream_search,
)


def _to_upstream_state(net: SuperBNN) -> dict:
    """Our state dict renamed back to upstream names (inverse of the importer), plus upstream extras."""
    inv_stem = {
        "conv.weight": "conv.weight", "conv.step_size": "conv.w_scale", "act.shift_in": "move1.bias",
        "act.slope": "relu.prelu.weight", "act.shift_out": "move2.bias",
    }
    inv_block = {
        "rsign1.shift": "move11.bias", "conv_kxk.weight": "binary_conv.weight", "rprelu1.shift_in": "move12.bias",
        "rprelu1.slope": "prelu1.prelu.weight", "rprelu1.shift_out": "move13.bias", "rsign2.shift": "move21.bias",
        "conv_1x1.weight": "binary_conv1x1.weight", "rprelu2.shift_in": "move22.bias",
        "rprelu2.slope": "prelu2.prelu.weight", "rprelu2.shift_out": "move23.bias",
    }
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith("classifier."):
            out["module.fc." + k.split(".", 1)[1]] = v
            continue
        _, s, j, rest = k.split(".", 3)
        table = inv_stem if s == "0" else inv_block
        if rest in table:
            name = table[rest]
        elif rest.startswith(("bn.", "bn1.", "bn2.")):
            bn, leaf = rest.split(".", 1)
            name = f"{bn}.bn.{leaf}"
        elif ".transform_" in rest:
            layer, t = rest.split(".")
            name = ("binary_conv." if layer == "conv_kxk" else "conv.") + "matrix_" + t.split("_")[1]
        elif rest.endswith("fp2bin"):
            k_max = int(v.shape[0] ** 0.5)
            name = f"binary_conv.fp2bin_{k_max}"
        else:
            raise AssertionError(rest)
        out[f"module.features.{s}.{j}.{name}"] = v
        if rest == "conv_kxk.weight":
            out[f"module.features.{s}.{j}.binary_conv.scaling_factor"] = torch.ones(v.shape[0], 1, 1, 1)
    out["module.features.0.0.conv.w_init_state"] = torch.ones(1)
    return out


def test_checkpoint_round_trip_with_module_prefix(tmp_path, tiny_space):
    src = SuperBNN(tiny_space, seed=1)
    ckpt = {"epoch": 3, "arch": "superbnn", "state_dict": _to_upstream_state(src), "optimizer": {}, "scheduler": {}}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)
    dst = SuperBNN(tiny_space, seed=2)
    load_upstream_checkpoint(dst, path)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    # a bare state dict works too
    dst2 = SuperBNN(tiny_space, seed=3)
    load_upstream_checkpoint(dst2, ckpt["state_dict"])
    assert torch.equal(dst2.classifier.weight, src.classifier.weight)


def test_checkpoint_of_another_space_is_refused(tmp_path, tiny_space):
    other = create_space("tiny").with_overrides(num_classes=9)
    state = _to_upstream_state(SuperBNN(other))
    with pytest.raises(CheckpointError, match="another search space"):
        load_upstream_checkpoint(SuperBNN(tiny_space), state)


def test_uninitialised_stem_step_is_initialised(tiny_space):
    state = _to_upstream_state(SuperBNN(tiny_space))
    state["module.features.0.0.conv.w_init_state"] = torch.zeros(1)
    state["module.features.0.0.conv.w_scale"] = torch.ones_like(state["module.features.0.0.conv.w_scale"])
    converted, unknown = convert_upstream_state_dict(state)
    assert not unknown
    assert not torch.equal(converted["stages.0.0.conv.step_size"], torch.ones(8))


class Evil:
    """Any class: unpickling it would run its module's code."""


def test_refuses_files_that_need_arbitrary_unpickling(tmp_path, tiny_space):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_upstream_checkpoint(SuperBNN(tiny_space), path)
    (tmp_path / "junk.pth.tar").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_upstream_checkpoint(SuperBNN(tiny_space), tmp_path / "junk.pth.tar")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_upstream_checkpoint(SuperBNN(tiny_space), tmp_path / "missing.pth.tar")
    # bytes that the restricted unpickler rejects with a KeyError (a memo read), not an UnpicklingError
    (tmp_path / "text.pth.tar").write_bytes(b"hello world" * 10)
    with pytest.raises(CheckpointError, match=r"cannot read .* as a torch file"):
        load_upstream_checkpoint(SuperBNN(tiny_space), tmp_path / "text.pth.tar")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_upstream_checkpoint(SuperBNN(tiny_space), tmp_path)


def test_codec_round_trip_and_canonical_inactive_rows():
    space = create_space("imagenet")
    rng = random.Random(0)
    for _ in range(100):
        a = space.sample(rng)
        t = arch_to_upstream(a, space)
        assert len(t) == 132
        assert arch_from_upstream(t, space) == a
    # Inactive rows may hold anything (upstream keeps stale values): same architecture.
    t = list(arch_to_upstream(space.smallest(), space))
    inactive_row = next(i for i in range(22) if t[6 * i] == -1)
    t[6 * inactive_row + 2 : 6 * inactive_row + 6] = [999, 7, 3, 5]
    assert arch_from_upstream(t, space) == space.smallest()


def test_codec_errors():
    space = create_space("imagenet")
    with pytest.raises(InvalidArch, match="needs 132"):
        arch_from_upstream([0] * 131, space)
    t = list(arch_to_upstream(space.largest(), space))
    t[6] = 3  # row 1 claims stage 3
    with pytest.raises(InvalidArch, match="expected"):
        arch_from_upstream(t, space)


def test_read_upstream_search_result(tmp_path):
    space = create_space("imagenet")
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(5)]
    # A non-monotonic member, as upstream mutation can produce.
    bad = list(arch_to_upstream(archs[0], space))
    bad[6 * 1 + 2], bad[6 * 2 + 2] = 96, 48
    tuples = [arch_to_upstream(a, space) for a in archs] + [tuple(bad)]
    vis = {t: {"ops": 50.0 + i, "acc": 60.0 + i, "visited": True} for i, t in enumerate(tuples)}
    info = {"memory": [tuples[:3]], "candidates": tuples[3:], "vis_dict": vis, "epoch": 20,
            "pareto_global": {50: tuples[0], 52: tuples[1], 56: tuples[5]}}
    path = tmp_path / "info.pth.tar"
    torch.save(info, path)
    res = load_upstream_search(path, space)
    assert [m.bin_mops for m in res.family] == [50, 52, 56]
    assert res.family[0].arch == archs[0] and res.family[0].top1 == 60.0
    assert res.family[2].nondecreasing is False
    assert len(res.evaluated) == 6 and res.epoch == 20


class _System:
    """Unpickling this would call os.system."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("true",))


def test_blocked_module_global_is_named(tmp_path):
    """torch names a blocked module's global in other words ("unsupported GLOBAL posix.system whose module ... is
    blocked"); the refusal still says which object it was, not "not a torch file"."""
    from nasbnn.utils.torch_files import safe_torch_load

    path = tmp_path / "evil.pt"
    torch.save({"x": _System()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .* holds a (posix|nt)\.system object"):
        safe_torch_load(path)


def test_truncated_torch_file_is_called_damaged(tmp_path):
    from nasbnn.utils.torch_files import safe_torch_load

    path = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        safe_torch_load(path)
