import os

import numpy as np
import pytest
import torch

from genrec.data.loader import host_batches


def made_by(users):
    return os.getpid(), torch.from_numpy(users * 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_make_every_batch_in_order(workers):
    slices = [np.arange(start, start + size) for start, size in ((0, 5), (5, 1), (6, 7), (13, 2), (15, 4))]
    made = list(host_batches(made_by, slices, workers))
    assert [batch.tolist() for _, batch in made] == [(users * 2).tolist() for users in slices]
    assert os.getpid() not in {pid for pid, _ in made}


def test_no_workers_make_batches_here():
    made = list(host_batches(made_by, [np.arange(3)], 0))
    assert made[0][0] == os.getpid()


def test_workers_leave_the_global_random_stream_alone():
    torch.manual_seed(0)
    list(host_batches(made_by, [np.arange(3)] * 4, 2))
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)
