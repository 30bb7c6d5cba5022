import torch

from genrec.data.batch import SequenceBatch
from genrec.eval.protocol import target_ranks
from genrec.ops.jagged import offsets_from_lengths


def test_ranks_exclude_padding_and_history():
    #            pad  1    2    3    4    5
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    batch = SequenceBatch(torch.tensor([1, 2]), offsets_from_lengths(torch.tensor([2])), max_seq_len=3)
    target = torch.tensor([3])
    assert target_ranks(scores, target, batch, exclude_history=True).tolist() == [1]
    assert target_ranks(scores, target, batch, exclude_history=False).tolist() == [3]
    assert target_ranks(scores, torch.tensor([5]), batch, exclude_history=True).tolist() == [3]
