"""The kernels' tolerance rule (flash-attention's): the kernel's error against an fp64 reference must be at most
`factor` times the error of the PyTorch reference run in the kernel's precision, plus flash-attention's floor:
twice the rounding error of the kernel's dtype at the values' scale, max|(x + 0.3 - 0.3) - x|."""

import torch


def assert_within_rule(kernel, low_precision_ref, exact, factor, dtype, what, ulps=0):
    """ulps: slack of that many units in the last place of dtype at the largest |exact| (for random shapes, where
    a single-token sequence leaves the reference nearly exact and only the summation orders differ)."""
    kernel_err = (kernel.double() - exact).abs().max().item()
    ref_err = (low_precision_ref.double() - exact).abs().max().item()
    floor = 2 * ((exact.to(dtype) + 0.3 - 0.3).double() - exact).abs().max().item()
    slack = ulps * torch.finfo(dtype).eps * exact.abs().max().item() if exact.numel() else 0.0
    bound = factor * ref_err + floor + slack
    assert kernel_err <= bound, f"{what}: kernel error {kernel_err:.3g} > bound {bound:.3g} (ref {ref_err:.3g})"
