"""Numerical kernels behind one public function each; every fast path has a reference twin."""

from genrec.ops.attention import BucketedBias, hstu_attention

__all__ = ["BucketedBias", "hstu_attention"]
