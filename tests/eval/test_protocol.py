import torch

from genrec.config import ModelConfig
from genrec.data.batch import SequenceBatch
from genrec.eval.protocol import model_scorer, target_ranks
from genrec.model.retrieval import SequentialRetriever
from genrec.ops.jagged import offsets_from_lengths


def test_ranks_exclude_padding_and_history():
    #            pad  1    2    3    4    5
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    batch = SequenceBatch(torch.tensor([1, 2]), offsets_from_lengths(torch.tensor([2])), max_seq_len=3)
    target = torch.tensor([3])
    assert target_ranks(scores, target, batch, exclude_history=True).tolist() == [1]
    assert target_ranks(scores, target, batch, exclude_history=False).tolist() == [3]
    assert target_ranks(scores, torch.tensor([5]), batch, exclude_history=True).tolist() == [3]


def test_model_scores_stay_fp32_under_autocast():
    """Scores rounded to bf16 tie, and ties rank the target too high: only the encoder may autocast."""
    torch.manual_seed(0)
    model = SequentialRetriever(ModelConfig(embedding_dim=16, qk_dim=8, v_dim=8), num_items=50, max_seq_len=8,
                                use_time=False).eval()
    batch = SequenceBatch(torch.tensor([3, 7, 9, 4, 2]), offsets_from_lengths(torch.tensor([3, 2])), max_seq_len=8)
    with torch.no_grad():
        scores = model_scorer(model, torch.bfloat16)(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            users = model(batch)[torch.tensor([2, 4])]
        expected = users.float() @ model.item_embeddings().T
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
