"""A row-sharded embedding table equals the unsharded nn.Embedding: lookups, gradients and an optimizer
step, on 2 and 4 CPU processes over Gloo (under torchrun, as the other multi-process tests), with uneven
shards, repeated ids and a rank whose batch is empty."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genrec.train.sharded_embedding import row_bounds


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_equals_unsharded(world_size):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    script = Path(__file__).with_name("sharded_embedding_ranks.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(world_size), str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"ranks={world_size} sharded=unsharded" in run.stdout


def test_row_bounds_cover_the_table_unevenly():
    assert row_bounds(23, 4).tolist() == [0, 6, 12, 18, 23]
    assert row_bounds(3, 4).tolist() == [0, 1, 2, 3, 3]  # a rank may own no row
