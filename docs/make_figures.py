"""Draw ``docs/img/pnn_layer.png``: what one PNN layer computes, from a real ``PerturbConv2d``.

Run from the repository root (needs matplotlib, the ``examples`` extra)::

    python docs/make_figures.py

The figure shows one input channel, the layer's own fixed noise masks, the perturbed and
activated maps, and the two output maps of the 1x1 convolution. The panels are the layer's
tensors (its ``noise.masks`` buffer and ``weight``), and the script checks that the outputs drawn
equal ``layer(x)``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from perturbnn import PerturbConv2d

OUT = Path(__file__).resolve().parent / "img" / "pnn_layer.png"
NMASKS, LEVEL, SIZE = 3, 0.5, 32


def input_image() -> torch.Tensor:
    """A smooth synthetic 32x32 map (a bright disk on a gradient), shape (1, 1, 32, 32)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    disk = ((xs + 0.2) ** 2 + (ys - 0.1) ** 2 < 0.35).float()
    return (0.8 * disk + 0.4 * xs).view(1, 1, SIZE, SIZE)


def main() -> None:
    torch.manual_seed(0)  # the 1x1 weights; the masks come from their own generator
    layer = PerturbConv2d(
        1, 2, nmasks=NMASKS, input_size=SIZE, level=LEVEL, use_act=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    x = input_image()
    with torch.no_grad():
        masks = layer.noise.masks[0]  # (nmasks, H, W)
        perturbed = x[0, 0] + LEVEL * masks  # (nmasks, H, W)
        activated = torch.relu(perturbed)
        weight = layer.weight[:, :, 0, 0].detach()  # (out_channels, nmasks)
        assert layer.bias is not None
        outputs = torch.einsum("om,mhw->ohw", weight, activated) + layer.bias.view(-1, 1, 1)
        torch.testing.assert_close(outputs, layer(x)[0])  # the figure is what the layer computes

    fig = plt.figure(figsize=(12, 6.6), layout="constrained")
    grid = fig.add_gridspec(NMASKS, 5)

    def panel(row: int, col: int, image: torch.Tensor, title: str) -> None:
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(image.numpy(), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    panel(NMASKS // 2, 0, x[0, 0], "input channel $x$")
    for m in range(NMASKS):
        panel(m, 1, masks[m], f"fixed noise mask $N_{m + 1}$")
        panel(m, 2, perturbed[m], f"$x + {LEVEL}\\,N_{m + 1}$")
        panel(m, 3, activated[m], f"$q_{m + 1} = \\mathrm{{relu}}(x + {LEVEL}\\,N_{m + 1})$")
    for o, row in enumerate((0, NMASKS - 1)):
        terms = " ".join(f"{float(weight[o, m]):+.2f}\\,q_{m + 1}" for m in range(NMASKS))
        panel(row, 4, outputs[o], f"output $y_{o + 1}$ (1x1 convolution):\n${terms} + b_{o + 1}$")
    fig.suptitle(
        "One PNN layer (PerturbConv2d, 1 input channel, nmasks=3, level=0.5, use_act=True, "
        "2 outputs):\nadd fixed noise masks, apply the activation, mix with a learned 1x1 "
        "convolution (weights: the layer's initial ones; training learns them; the masks stay fixed)",
        fontsize=11,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=80, metadata={"Software": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
