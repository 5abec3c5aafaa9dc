import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import randomize_, rel_err

from nasbnn.errors import InvalidArch
from nasbnn.export import export_subnet
from nasbnn.models import StaticBNN, SuperBNN
from nasbnn.presets import create_space, list_spaces

REPO = Path(__file__).resolve().parents[1]

# ImageNet-size members are checked at 64x64 (the models take any resolution) to keep CPU time low.
RES = {"imagenet": 64, "cifar": 32, "fashion-mnist": 28, "tiny": 16}


@pytest.mark.parametrize("name", list_spaces())
def test_export_matches_supernet_in_eval(name):
    space = create_space(name)
    net = randomize_(SuperBNN(space, seed=1), seed=2).eval()
    rng = random.Random(5)
    n = 2 if name == "imagenet" else 4
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n)]
    x = torch.randn(2, space.in_channels, RES[name], RES[name], generator=torch.Generator().manual_seed(0))
    for arch in archs:
        net.set_arch(arch)
        with torch.no_grad():
            ref = net(x)
            static = export_subnet(net, arch)
            assert isinstance(static, StaticBNN)
            out = static(x)
        assert rel_err(out, ref) <= 1e-5, (name, str(arch))


def test_export_leaves_supernet_untouched(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).eval()
    net.set_arch(tiny_space.smallest())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    static = export_subnet(net, tiny_space.largest())
    assert net.arch == tiny_space.smallest()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # No shared storage: training the export does not move the supernet.
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_export_has_exact_shapes_and_trains(tiny_space):
    net = randomize_(SuperBNN(tiny_space)).eval()
    arch = tiny_space.largest()
    static = export_subnet(net, arch).train()
    n_static = sum(p.numel() for p in static.parameters())
    n_super = sum(p.numel() for p in net.parameters())
    assert n_static < n_super
    static(torch.randn(4, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in static.parameters())


def test_export_rejects_foreign_arch(tiny_space):
    net = SuperBNN(tiny_space)
    with pytest.raises(InvalidArch):
        export_subnet(net, create_space("imagenet").largest())


def test_models_export_without_the_export_module():
    # The layers export themselves: the supernet builds its StaticBNN without importing nasbnn.export.
    code = ("import sys; from nasbnn.models import SuperBNN; from nasbnn.presets import create_space; "
            "net = SuperBNN(create_space('tiny')); print(type(net.export()).__name__, 'nasbnn.export' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["StaticBNN", "False"]
