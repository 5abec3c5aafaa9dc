"""Worker of test_distributed: trains a tiny supernet under torchrun and saves this rank's weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nasbnn.config import RunConfig, load_config
from nasbnn.train.supernet import train_supernet


def main() -> None:
    out = Path(sys.argv[1])
    cfg = load_config(RunConfig, None, [
        "space.name=tiny", "data.name=synthetic", "data.holdout_per_class=8", "data.batch_size=16",
        "data.synthetic.num_train=160", "data.synthetic.num_test=32", "train.epochs=1", "train.log_every=2",
        "train.checkpoint_every=4", "train.eval_every_epochs=10", "train.eval_images=32", "device=cpu",
        f"out={out}",
    ])
    models = []
    train_supernet(cfg, progress=False, max_steps=6, model_out=models)
    state = {k: v.detach().clone() for k, v in models[0].state_dict().items()}
    torch.save(state, out / f"rank{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    main()
