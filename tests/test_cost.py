import random

import pytest

from nasbnn.cost import arch_cost, layer_costs
from nasbnn.errors import NasbnnError
from nasbnn.presets import create_space
from nasbnn.space import Arch


def test_tiny_smallest_hand_count():
    space = create_space("tiny")  # 3x16x16 input, 5 classes
    a = space.smallest()
    assert str(a) == "c4k3g1.1|c8k3g1.1|c16k3g2.2"
    # stem: 3x3 conv 3->4 at stride 2 -> 8x8: 9*3*4*64 = 6912 MACs, /8 upstream = 864
    # stage1 block0 (in 4, 8x8): 3x3 4->4 g1 = 9*4*4*64 = 9216 BOPs; 1x1 4->8 = 4*8*64 = 2048
    # stage2 block0 (in 8, stride 2 -> 4x4): 3x3 g2 = 9*4*8*16 = 4608; 1x1 g2 8->16 = 4*16*16 = 1024
    # classifier: 5*(16+1) = 85 FLOPs
    c = arch_cost(a, space)
    assert c.flops == 864 + 85
    assert c.bops == 9216 + 2048 + 4608 + 1024
    assert c.ops == pytest.approx(949 + 16896 / 64)
    std = arch_cost(a, space, convention="standard")
    assert std.flops == 6912 + 85 and std.bops == c.bops


def test_tiny_largest_hand_count():
    space = create_space("tiny")
    a = space.largest()
    assert str(a) == "c8k3g1.1|c16k3g1.1,c16k3g1.1|c32k5g1.1,c32k5g1.1"
    stem = 9 * 3 * 8 * 64 // 8
    s1b0 = 9 * 8 * 8 * 64 + 8 * 16 * 64
    s1b1 = 9 * 16 * 16 * 64 + 16 * 16 * 64
    s2b0 = 25 * 16 * 16 * 16 + 16 * 32 * 16  # stride 2: 4x4 outputs
    s2b1 = 25 * 32 * 32 * 16 + 32 * 32 * 16
    c = arch_cost(a, space)
    assert c.flops == stem + 5 * 33
    assert c.bops == s1b0 + s1b1 + s2b0 + s2b1


def test_layer_rows_sum_to_total_and_resolution_scales():
    space = create_space("imagenet")
    rng = random.Random(0)
    for _ in range(20):
        a = space.sample(rng)
        rows = layer_costs(a, space)
        tot = arch_cost(a, space)
        assert sum(r.cost.flops for r in rows) == pytest.approx(tot.flops)
        assert sum(r.cost.bops for r in rows) == pytest.approx(tot.bops)
        double = arch_cost(a, space, resolution=448)  # every feature map doubles in size
        assert double.bops == 4 * tot.bops


def test_monotone_in_width_kernel_and_inverse_in_groups():
    space = create_space("imagenet")
    base = Arch.parse(str(space.smallest()))
    wider = Arch.parse(str(base).replace("c96k3g2.1,c96k3g2.1", "c96k3g2.1,c128k3g2.1"))
    bigger_k = Arch.parse(str(base).replace("c96k3g2.1,c96k3g2.1", "c96k3g2.1,c96k5g2.1"))
    fewer_groups = Arch.parse(str(base).replace("c96k3g2.1,c96k3g2.1", "c96k3g2.1,c96k3g1.1"))
    c0 = arch_cost(base, space).ops
    for a in (wider, bigger_k, fewer_groups):
        space.validate(a)
        assert arch_cost(a, space).ops > c0


def test_cost_equals_hook_count_on_exported_network():
    import torch

    from nasbnn.export import export_subnet
    from nasbnn.models import SuperBNN
    from nasbnn.ops.layers import BinaryConv2d, QConv2d

    space = create_space("tiny")
    net = SuperBNN(space).eval()
    rng = random.Random(5)
    for _ in range(5):
        a = space.sample(rng)
        static = export_subnet(net, a)
        counted = {"bops": 0, "macs": 0}

        def hook(m, inp, out, counted=counted):
            macs = out.shape[1] * out.shape[2] * out.shape[3] * m.weight.shape[1] * m.kernel_size**2
            counted["bops" if isinstance(m, BinaryConv2d) else "macs"] += macs

        hs = [m.register_forward_hook(hook) for m in static.modules() if isinstance(m, (BinaryConv2d, QConv2d))]
        with torch.no_grad():
            static(torch.zeros(1, 3, 16, 16))
        for h in hs:
            h.remove()
        c = arch_cost(a, space, convention="standard")
        assert c.bops == counted["bops"]
        assert c.flops == counted["macs"] + space.num_classes * (a.final_width + 1)


def test_memoized_and_conventions():
    space = create_space("imagenet")
    a = space.largest()
    assert arch_cost(a, space) is arch_cost(a, space)
    with pytest.raises(NasbnnError, match="valid: upstream, standard"):
        arch_cost(a, space, convention="weird")
    # The FP-stem count adds about 14 M OPs to the largest ImageNet member (stem 48 channels).
    diff = arch_cost(a, space, convention="standard").mops - arch_cost(a, space).mops
    assert 13 < diff < 15


def test_layer_kinds_are_typed_and_keep_their_text():
    """Layer kinds are LayerKind members whose text is what tables and JSON show; a misspelt kind is an error."""
    import json

    from nasbnn.cost import Cost, LayerCost, LayerKind

    space = create_space("tiny")
    rows = layer_costs(space.smallest(), space)
    assert [r.kind for r in rows] == [LayerKind.INT8_CONV] + [LayerKind.BINARY_CONV] * 4 + [LayerKind.FP_LINEAR]
    assert layer_costs(space.smallest(), space, convention="standard")[0].kind is LayerKind.FP_CONV
    assert [str(k) for k in LayerKind] == ["int8 conv", "binary conv", "fp conv", "fp linear"]
    assert f"{LayerKind.FP_LINEAR:>10}|" == " fp linear|"
    assert json.loads(json.dumps({"kind": LayerKind.BINARY_CONV})) == {"kind": "binary conv"}
    # the text read back from a file, or given by a caller, is the member; a typo is not silently a new kind
    assert LayerKind("binary conv") is LayerKind.BINARY_CONV == "binary conv"
    assert LayerCost("x", "fp conv", 1, 1, 1, 1, 1, 1, Cost(0.0, 0.0)).kind is LayerKind.FP_CONV
    with pytest.raises(ValueError, match="binry conv"):
        LayerCost("x", "binry conv", 1, 1, 1, 1, 1, 1, Cost(0.0, 0.0))
