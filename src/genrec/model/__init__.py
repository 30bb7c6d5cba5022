"""Model architectures: embeddings, relative bias, HSTU and SASRec encoders, retrieval model."""

from genrec.model.retrieval import SequentialRetriever

__all__ = ["SequentialRetriever"]
