"""Run under torchrun by test_parallel.py: after an epoch on different shares of the data, every rank
must hold the same weights (DDP averaged the gradients); prints one line on rank 0."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from genrec.train.trainer import Trainer  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

trainer = Trainer(tiny_config(mode="paper", epochs=1), Path(sys.argv[1]), progress=False, log=lambda _: None)
before = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
trainer.train_epoch()
after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
checksums = [torch.zeros(2, dtype=torch.float64) for _ in range(dist.get_world_size())]
dist.all_gather(checksums, torch.stack([after.double().sum(), after.double().square().sum()]))
if dist.get_rank() == 0:
    agree = all(torch.equal(c, checksums[0]) for c in checksums)
    print(f"ranks={dist.get_world_size()} agree={agree} moved={not torch.equal(before, after)}")
# every rank done with gloo, then out without tearing it down: torch 2.13's Gloo teardown has aborted
# ("terminate called without an active exception") after a barrier too, in CI runs of this script
dist.barrier()
sys.stdout.flush()
os._exit(0)
