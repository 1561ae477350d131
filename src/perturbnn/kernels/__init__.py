"""The exact fast paths of the PNN layer, one module a path.

* :mod:`perturbnn.kernels.linear`: no activation, folded into one convolution (paper Sec. 3.1).
* :mod:`perturbnn.kernels.chunked`: with an activation, channel blocks, recomputed in backward.
* :mod:`perturbnn.kernels.compiled`: the chunked path fused by ``torch.compile``.
* :mod:`perturbnn.kernels.activation`: pointwise activations with their derivatives.

Each computes what :func:`perturbnn.functional.perturb_conv2d` with ``impl="grouped"`` (the
literal layer) computes; the layer library picks one through ``impl=``.
"""
