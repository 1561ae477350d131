"""Smoke test of an installed wheel, run from outside the source tree by .ci/run.

Imports perturbnn from site-packages, builds every registered model at a small width, runs one
forward each, and converts one torchvision network.
"""

from __future__ import annotations

import pathlib
import sys

import torch
import torchvision

import perturbnn

package = pathlib.Path(perturbnn.__file__).resolve().parent
if "site-packages" not in package.parts:
    sys.exit(f"perturbnn imported from {package}, not from an installed wheel")
if not (package / "py.typed").is_file():
    sys.exit("py.typed missing from the installed package")

for name in perturbnn.list_models():
    model = perturbnn.build_model(name, nfilters=3 if name.startswith("perturb") else 2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10), (name, out.shape)

net, report = perturbnn.convert(torchvision.models.resnet18(weights=None, num_classes=10))
assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
print(report.layers[0].reason)
print(
    f"smoke: perturbnn {perturbnn.__version__} from {package}: {len(perturbnn.list_models())} "
    f"models built and run, resnet18 converted ({len(report.replaced)} layers replaced)"
)
