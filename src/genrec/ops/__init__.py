"""Numerical kernels behind one public function each; every fast path has a reference twin."""

from genrec.ops.attention import hstu_attention

__all__ = ["hstu_attention"]
