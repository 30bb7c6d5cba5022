"""genrec: Generative Recommenders (HSTU) — jagged data, fused attention, training, inference."""

__version__ = "0.1.0"
