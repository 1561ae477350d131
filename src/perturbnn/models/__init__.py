"""Model builders of the PNN reproduction and their registry.

Source: Klachko's ``--net-type`` choices.
"""

from perturbnn.models._config import FIRST_LAYER_TYPES, POOL_TYPES, ModelConfig, ModelOptions
from perturbnn.models._plain import PlainNet
from perturbnn.models._registry import build_model, list_models, register_model
from perturbnn.models.blocks import AuthorsFirstLayer, BasicBlock, NoiseLayer, PerturbBottleneck
from perturbnn.models.cifarnet import cifarnet
from perturbnn.models.lenet import lenet
from perturbnn.models.resnet import (
    ResNet,
    noiseresnet18,
    noiseresnet34,
    noiseresnet50,
    noiseresnet101,
    noiseresnet152,
    perturb_resnet18,
    perturb_resnet34,
    perturb_resnet50,
    resnet18,
)

__all__ = [
    "FIRST_LAYER_TYPES",
    "POOL_TYPES",
    "AuthorsFirstLayer",
    "BasicBlock",
    "ModelConfig",
    "ModelOptions",
    "NoiseLayer",
    "PerturbBottleneck",
    "PlainNet",
    "ResNet",
    "build_model",
    "cifarnet",
    "lenet",
    "list_models",
    "noiseresnet18",
    "noiseresnet34",
    "noiseresnet50",
    "noiseresnet101",
    "noiseresnet152",
    "perturb_resnet18",
    "perturb_resnet34",
    "perturb_resnet50",
    "register_model",
    "resnet18",
]
