"""Draw the MU-Diff block diagram used by docs/README.md (``docs/architecture.png``).

The figure is drawn from the networks as this bundle implements them (scripts/networks, scripts/diffusion): G1 with
one encoder per input, G2 with the style encoder on G1's estimate and the pairwise gated fusion, the shared
time-conditioned critic with its uncertainty map (training only), and the 4-step sampler that averages both
generators. Regenerate it after changing the architecture::

    python -m tools.draw_architecture --out docs/architecture.png
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from scripts.data.io_utils import atomic_write  # noqa: E402

__all__ = ["draw_architecture", "main"]

# colours: inputs, G1, G2, critic/training, sampler/inference, outputs
_INPUT, _G1, _G2, _CRITIC, _SAMPLER, _OUTPUT = "#eeeeee", "#dbe9f6", "#dff0d8", "#fbe3d6", "#ece4f5", "#fff5c2"
_EDGE = "#333333"


def _panel(ax: plt.Axes, x: float, y: float, w: float, h: float, colour: str, title: str) -> None:
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.2,rounding_size=0.8", fc=colour, ec="#888888", lw=1.0)
    )
    ax.text(x + 0.6, y + h - 0.4, title, ha="left", va="top", fontsize=10.5, fontweight="bold", color="#222222")


def _box(
    ax: plt.Axes, x: float, y: float, w: float, h: float, text: str, colour: str = "white", size: float = 8.5
) -> tuple[float, float, float, float]:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.1,rounding_size=0.35", fc=colour, ec=_EDGE, lw=0.9))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, linespacing=1.25)
    return x, y, w, h


def _arrow(
    ax: plt.Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str = "",
    colour: str = _EDGE,
    style: str = "-|>",
    rad: float = 0.0,
    dashed: bool = False,
    label_offset: tuple[float, float] = (0.0, 0.6),
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=11,
            lw=1.1,
            color=colour,
            linestyle="--" if dashed else "-",
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=1.5,
            shrinkB=1.5,
        )
    )
    if label:
        mx, my = (start[0] + end[0]) / 2 + label_offset[0], (start[1] + end[1]) / 2 + label_offset[1]
        ax.text(mx, my, label, ha="center", va="bottom", fontsize=7.5, color=colour, style="italic")


def _right(b: tuple[float, float, float, float], frac: float = 0.5) -> tuple[float, float]:
    return b[0] + b[2], b[1] + b[3] * frac


def _left(b: tuple[float, float, float, float], frac: float = 0.5) -> tuple[float, float]:
    return b[0], b[1] + b[3] * frac


def _top(b: tuple[float, float, float, float], frac: float = 0.5) -> tuple[float, float]:
    return b[0] + b[2] * frac, b[1] + b[3]


def _bottom(b: tuple[float, float, float, float], frac: float = 0.5) -> tuple[float, float]:
    return b[0] + b[2] * frac, b[1]


def _draw_inputs(ax: plt.Axes) -> dict[str, tuple]:
    _panel(ax, 0.5, 19.0, 11.0, 37.5, _INPUT, "Inputs")
    boxes = {
        "x": _box(ax, 1.3, 46.5, 9.4, 5.0, "$x_{t+1}$\nnoisy target\n(1 ch, [-1, 1])", "white"),
        "c1": _box(ax, 1.3, 39.5, 9.4, 4.2, "$c_1$  FLAIR", "white"),
        "c2": _box(ax, 1.3, 34.0, 9.4, 4.2, "$c_2$  T2", "white"),
        "c3": _box(ax, 1.3, 28.5, 9.4, 4.2, "$c_3$  T1", "white"),
        "tz": _box(
            ax,
            1.3,
            19.8,
            9.4,
            5.0,
            "step $t$ (sinusoidal)\nlatent $z$ ~ N(0, I$_{100}$)\nsame $z$ for G1, G2",
            "white",
            7.5,
        ),
    }
    ax.text(
        6.0,
        26.6,
        "each input goes to G1 and G2\ncontrast order = task order\n(G2's fusion is asymmetric)",
        ha="center",
        fontsize=6.6,
        color="#555555",
    )
    return boxes


def _draw_g1(ax: plt.Axes) -> dict[str, tuple]:
    _panel(ax, 13.5, 41.5, 56.0, 15.0, _G1, "G1  contrast-specific generator  (NCSN++, 20.5 M parameters at nf 64)")
    names = ["$x_{t+1}$", "$c_1$", "$c_2$", "$c_3$"]
    encoders = [_box(ax, 14.5, 51.6 - 2.6 * i, 9.5, 2.1, f"enc({n})", "white", 7.8) for i, n in enumerate(names)]
    ax.text(19.25, 42.0, "conv-GN-SiLU-conv, one per input", ha="center", fontsize=6.8, color="#444444")
    concat = _box(ax, 26.0, 45.5, 6.5, 6.5, "concat\n$h_0$\n4·nf ch", "white", 7.8)
    unet = _box(
        ax,
        35.0,
        44.0,
        20.0,
        9.5,
        "U-Net $H_1$\nBigGAN res blocks with AdaGN($z$)\n+ time embedding($t$), FIR resampling,\n"
        "input pyramid from $x_{t+1}$,\nbottleneck self-attention, tanh",
        "white",
        7.6,
    )
    out = _box(ax, 58.0, 46.0, 10.5, 5.5, "$\\hat{x}_0^{1}$\nG1's estimate\nof the target", _OUTPUT, 8.2)
    for enc in encoders:
        _arrow(ax, _right(enc), _left(concat))
    _arrow(ax, _right(concat), _left(unet))
    _arrow(ax, _right(unet), _left(out))
    return {"out": out, "panel_left": (13.5, 41.5, 0.1, 15.0), "unet": unet}


def _draw_g2(ax: plt.Axes) -> dict[str, tuple]:
    _panel(ax, 13.5, 19.0, 56.0, 21.0, _G2, "G2  contrast-aware generator  (21.4 M parameters at nf 64)")
    style = _box(
        ax,
        27.0,
        33.3,
        21.0,
        3.6,
        "$\\rho$: style encoder on $\\hat{x}_0^{1}$   conv, GAP, linear  →  style $s$",
        "white",
        7.8,
    )
    mod = [
        _box(ax, 14.5, 30.0 - 3.2 * i, 9.5, 2.6, f"enc$_s$({n})", "white", 7.8)
        for i, n in enumerate(["$c_1$", "$c_2$", "$c_3$"])
    ]
    encx = _box(ax, 14.5, 20.3, 9.5, 2.6, "enc($x_{t+1}$)", "white", 7.8)
    fusion = _box(
        ax,
        27.0,
        21.5,
        15.0,
        10.0,
        "$\\tau$: pairwise gated fusion\npairs (1→2), (2→3), (3→1)\n"
        "$f_{ij} = b \\odot W_i(a \\odot f_i)$\n$\\quad + (1-b) \\odot f_j$\n"
        "$a, b = \\sigma(\\mathrm{conv}([f_1 f_2 f_3]))$",
        "white",
        7.6,
    )
    concat = _box(ax, 44.0, 22.5, 5.5, 7.0, "concat\n$h_0$\n4·nf", "white", 7.6)
    unet = _box(ax, 51.5, 22.5, 6.3, 7.0, "U-Net\n$H_2$\n(as $H_1$,\nown\nweights)", "white", 7.4)
    out = _box(ax, 59.5, 23.2, 9.0, 5.5, "$\\hat{x}_0^{2}$\nG2's estimate", _OUTPUT, 8.2)
    _arrow(ax, _left(style), _top(mod[0], 0.7), "style $s$ → AdaGN", rad=0.25, label_offset=(-1.5, 0.4))
    for enc in mod:
        _arrow(ax, _right(enc), _left(fusion, 0.45))
    _arrow(ax, _right(encx), _left(concat, 0.15), rad=-0.1)
    _arrow(ax, _right(fusion), _left(concat))
    _arrow(ax, _right(concat), _left(unet))
    _arrow(ax, _right(unet), _left(out))
    ax.text(41.5, 19.6, "only the encoders differ from G1", ha="center", fontsize=6.8, color="#444444")
    return {"style": style, "out": out}


def _draw_critic(ax: plt.Axes) -> dict[str, tuple]:
    _panel(ax, 71.0, 19.0, 28.5, 37.5, _CRITIC, "Training only: shared critic $\\psi$")
    post = _box(
        ax,
        72.0,
        46.8,
        26.5,
        5.2,
        "posterior samples, $k$ = 1, 2\n"
        "$x_t^{pk} = c_1(t)\\,\\hat{x}_0^{k} + c_2(t)\\,x_{t+1} + \\sigma_t\\,\\epsilon$",
        "white",
        8.0,
    )
    critic = _box(
        ax,
        72.0,
        38.5,
        26.5,
        6.0,
        "critic $\\psi(x_t, x_{t+1}, t)$   27.7 M parameters\n6 down-sampling blocks, minibatch stddev;\n"
        "sees no input contrast",
        "white",
        7.8,
    )
    logit = _box(ax, 72.0, 31.0, 9.0, 5.0, "logit\n→ $L_{adv}$\n(softplus)", "white", 7.8)
    umap = _box(
        ax,
        83.0,
        29.8,
        15.5,
        6.7,
        "features 8·ngf at H/8\n→ 1×1 conv (frozen, seeded)\n→ sigmoid → bilinear up\n= uncertainty map $M_k$",
        "white",
        7.6,
    )
    loss = _box(
        ax,
        72.0,
        20.0,
        26.5,
        8.3,
        "$L_G = L_{adv} + 0.5\\,L_1(\\hat{x}_0^{k}, x_0)$\n$\\quad + 0.1\\,L_{mask}$, with\n"
        "$L_{mask} = M_2 \\odot \\mathrm{BCE}(x_t^{p1}, \\sigma(x_t^{p2}))$\n"
        "$\\quad + M_1 \\odot \\mathrm{BCE}(x_t^{p2}, \\sigma(x_t^{p1}))$\n"
        "$L_D$: softplus real / fake + lazy R1",
        "white",
        7.6,
    )
    _arrow(ax, _bottom(post), _top(critic), "fake: $x_t^{pk}$   real: $q(x_t | x_0)$", label_offset=(0.0, -0.2))
    _arrow(ax, _bottom(critic, 0.2), _top(logit))
    _arrow(ax, _bottom(critic, 0.75), _top(umap))
    _arrow(ax, _bottom(logit), _top(loss, 0.17))
    _arrow(ax, _bottom(umap), _top(loss, 0.75), "mutual learning", label_offset=(1.5, -0.2))
    return {"post": post}


def _draw_sampler(ax: plt.Axes) -> None:
    _panel(
        ax,
        0.5,
        0.5,
        99.0,
        16.5,
        _SAMPLER,
        "Inference: 4-step reverse diffusion (MUDiffSampler), both generators averaged",
    )
    start = _box(ax, 1.5, 4.0, 9.5, 6.5, "$x_4$ ~ N(0, I)\n(1 ch)", "white", 8.2)
    previous = start
    x = 13.5
    for step in (3, 2, 1, 0):
        noise = "+ $\\sigma_t\\,\\epsilon$" if step > 0 else "no noise"
        b = _box(
            ax,
            x,
            2.3,
            17.0,
            9.8,
            f"step $t$ = {step}\n$\\hat{{x}}_0^{{1}}$ = G1($x_{{t+1}}$, c, t, z)\n"
            f"$\\hat{{x}}_0^{{2}}$ = G2(..., $\\hat{{x}}_0^{{1}}$)\n"
            f"$x_t$ = mean of the two\nposterior means {noise}",
            "white",
            7.6,
        )
        _arrow(ax, _right(previous), _left(b))
        previous = b
        x += 19.5
    out = _box(ax, 91.0, 3.5, 8.0, 7.5, "$x_0 =$\n$(\\hat{x}_0^{1} + \\hat{x}_0^{2})/2$\nsynthesis", _OUTPUT, 7.6)
    _arrow(ax, _right(previous), _left(out))
    ax.text(
        50.0,
        13.2,
        "8 generator passes per slice; new $z$ per step, shared by G1 and G2; "
        "the same input contrasts $c$ at every step",
        ha="center",
        fontsize=7.6,
        color="#333333",
    )


def draw_architecture(out: str | os.PathLike = "docs/architecture.png", dpi: int = 110) -> Path:
    """Render the diagram to ``out`` (PNG, written atomically) and return the path."""
    fig = plt.figure(figsize=(16.0, 10.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.95))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 57.5)
    ax.axis("off")
    fig.suptitle(
        "MU-Diff: mutual-learning adversarial diffusion for missing-contrast MRI synthesis (2D axial slices, T = 4)",
        fontsize=13,
        fontweight="bold",
        y=0.985,
    )
    _draw_inputs(ax)
    g1 = _draw_g1(ax)
    g2 = _draw_g2(ax)
    critic = _draw_critic(ax)
    _draw_sampler(ax)
    # every input feeds both generators: one arrow per generator panel, from the middle of the input stack
    for y in (49.0, 29.5):
        _arrow(ax, (11.2, y), (13.6, y), style="simple,head_width=0.9,head_length=0.7", colour="#555555")
    # G1's estimate is G2's pseudo target (not detached), and both estimates go to the posterior / critic
    _arrow(
        ax, _bottom(g1["out"]), _right(g2["style"]), "pseudo target\n(not detached)", rad=-0.2, label_offset=(3.8, -1.8)
    )
    _arrow(ax, _right(g1["out"]), _left(critic["post"], 0.7))
    _arrow(ax, _right(g2["out"]), _left(critic["post"], 0.25), rad=0.25)
    target = Path(out)
    try:
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None}))
    finally:
        plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> int:
    import fire

    fire.Fire(lambda out="docs/architecture.png", dpi=110: print(draw_architecture(out, int(dpi))), command=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
