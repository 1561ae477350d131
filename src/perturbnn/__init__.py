"""perturbnn: perturbation layers from Perturbative Neural Networks (PNN, CVPR 2018).

Layers (:class:`NoiseMask`, :class:`PerturbConv2d`, :class:`MixMaps`, :class:`PerturbLayer`,
:class:`PerturbBottleneck`), the five networks of the PNN reproduction (:func:`resnet18`,
:func:`noiseresnet18`, :func:`perturb_resnet18`, :func:`cifarnet`, :func:`lenet`), deeper ResNets
(:func:`noiseresnet34` to :func:`noiseresnet152`, :func:`perturb_resnet34`,
:func:`perturb_resnet50`), their registry, :func:`convert` for existing networks,
:func:`reparameterize` to fold PNN layers without activation into plain 1x1 convolutions for
deployment, the independent reproduction's weight initialization (:func:`init_weights_`), and
:func:`share_cpu`, which lowers a model's CPU threads while other processes keep the CPUs busy.
"""

from perturbnn import functional
from perturbnn._version import __version__
from perturbnn.activations import ACTIVATIONS, make_activation
from perturbnn.convert import ConvertedLayer, ConvertReport, convert
from perturbnn.init import init_weights_
from perturbnn.layers import NOISE_TYPES, MixMaps, NoiseMask, PerturbConv2d, PerturbLayer
from perturbnn.models import (
    POOL_TYPES,
    ModelConfig,
    PerturbBottleneck,
    build_model,
    cifarnet,
    lenet,
    list_models,
    noiseresnet18,
    noiseresnet34,
    noiseresnet50,
    noiseresnet101,
    noiseresnet152,
    perturb_resnet18,
    perturb_resnet34,
    perturb_resnet50,
    register_model,
    resnet18,
)
from perturbnn.reparameterize import FoldedConv2d, FoldedLayer, FoldReport, reparameterize
from perturbnn.summary import count_mask_values, count_parameters
from perturbnn.threads import SharedCPU, share_cpu

__all__ = [
    "ACTIVATIONS",
    "NOISE_TYPES",
    "POOL_TYPES",
    "ConvertReport",
    "ConvertedLayer",
    "FoldReport",
    "FoldedConv2d",
    "FoldedLayer",
    "MixMaps",
    "ModelConfig",
    "NoiseMask",
    "PerturbBottleneck",
    "PerturbConv2d",
    "PerturbLayer",
    "SharedCPU",
    "__version__",
    "build_model",
    "cifarnet",
    "convert",
    "count_mask_values",
    "count_parameters",
    "functional",
    "init_weights_",
    "lenet",
    "list_models",
    "make_activation",
    "noiseresnet18",
    "noiseresnet34",
    "noiseresnet50",
    "noiseresnet101",
    "noiseresnet152",
    "perturb_resnet18",
    "perturb_resnet34",
    "perturb_resnet50",
    "register_model",
    "reparameterize",
    "resnet18",
    "share_cpu",
]
