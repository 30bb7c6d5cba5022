"""The item table's initialisation: any range of rows alone, the same as the whole table's, and a table left for
its ranks to build."""

import pytest
import torch

from genrec.config import Config
from genrec.model.embeddings import ITEM_INIT_BLOCK, InputEmbedding, item_rows
from genrec.model.retrieval import SequentialRetriever
from genrec.train.experiment import training_bytes

NUM_ROWS = 2 * ITEM_INIT_BLOCK + 123


@pytest.fixture(scope="module")
def whole():
    return item_rows(seed=11, lo=0, hi=NUM_ROWS, dim=3)


@pytest.mark.parametrize("lo, hi", [(0, 1), (1, 2), (7, ITEM_INIT_BLOCK + 9), (ITEM_INIT_BLOCK, 2 * ITEM_INIT_BLOCK),
                                    (ITEM_INIT_BLOCK - 1, ITEM_INIT_BLOCK + 1), (NUM_ROWS - 1, NUM_ROWS), (5, 5)])
def test_any_range_of_rows_is_that_slice_of_the_whole_table(whole, lo, hi):
    assert torch.equal(item_rows(11, lo, hi, 3), whole[lo:hi])


def test_rows_are_a_truncated_normal_with_a_zero_padding_row(whole):
    assert not whole[0].any() and whole[1:].ne(0).all()
    assert whole.abs().max() <= 0.04 and 0.015 < float(whole[1:].std()) < 0.02
    assert not torch.equal(item_rows(12, 0, 10, 3), whole[:10])  # another seed, other rows


def test_a_table_left_unbuilt_changes_no_other_weight():
    torch.manual_seed(0)
    built = InputEmbedding(50, 8, 5, 0.0)
    torch.manual_seed(0)
    left = InputEmbedding(50, 8, 5, 0.0, build_item_table=False)
    assert left.item.weight.is_meta and left.item_seed == built.item_seed
    assert torch.equal(left.position.weight, built.position.weight)
    assert torch.equal(built.item.weight, item_rows(built.item_seed, 0, 51, 8))
    torch.manual_seed(0)
    bf16 = InputEmbedding(50, 8, 5, 0.0, table_dtype="bfloat16")
    assert torch.equal(bf16.item.weight, built.item.weight.bfloat16())  # the same draws, rounded


def test_a_row_sharded_table_counts_its_share_of_memory():
    config = Config()
    with torch.device("meta"):
        model = SequentialRetriever(config.model, 10_000_000, 200, use_time=True)
    whole, shared = (training_bytes(model, "rowwise_adagrad", share) for share in (1.0, 0.25))
    table = 10_000_001 * config.model.embedding_dim * 4
    assert whole - shared == pytest.approx(0.75 * table, abs=1)
    assert training_bytes(model, "adamw", 0.25) == training_bytes(model, "adamw")  # a replica per rank
