"""Draw the AgentRefine pipeline figure of the method page: ``python book/figures/pipeline.py``.

Writes ``pipeline.svg`` beside this file (deterministic output; commit it with the script).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

STAGES = [  # (label, module, x, y)
    ("persona", "synth.personas", 0.6, 2.2),
    ("script", "synth: themes · world\n· llm", 2.75, 2.2),
    ("trajectory\n(DM + Player)", "synth: teacher\n· candidates", 4.9, 2.2),
    ("verification", "synth.verify", 7.05, 2.2),
    ("dataset\n(loss flags)", "data: chat · dataset\n· export", 9.2, 2.2),
    ("masked tuning", "tune: masking · train", 9.2, 0.6),
    ("evaluation", "eval: evaluate\n· engine", 7.05, 0.6),
    ("generalization,\nrobustness, diversity", "analysis: claims ·\ntaxonomy · diversity", 4.9, 0.6),
]
W, H = 1.85, 0.95


def box(ax, label, module, x, y, color):
    ax.add_patch(FancyBboxPatch((x - W / 2, y - H / 2), W, H, boxstyle="round,pad=0.05", fc=color, ec="#333"))
    ax.text(x, y + 0.13, label, ha="center", va="center", fontsize=9.5, weight="bold")
    ax.text(x, y - 0.3, module, ha="center", va="center", fontsize=7, color="#444", family="monospace")


def arrow(ax, a, b, bend=0.0, color="#333"):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, color=color,
                                 connectionstyle=f"arc3,rad={bend}"))


def main() -> Path:
    plt.rcParams["svg.hashsalt"] = "agentrefine"  # stable ids: the SVG only changes when the drawing does
    fig, ax = plt.subplots(figsize=(10.5, 3.6))
    ax.set_xlim(-0.4, 10.3)
    ax.set_ylim(-0.1, 3.6)
    ax.axis("off")
    colors = ["#e8eefc"] * 5 + ["#fdf0d5"] + ["#e3f4e1"] * 2
    for (label, module, x, y), color in zip(STAGES, colors, strict=True):
        box(ax, label, module, x, y, color)
    xy = [(x, y) for _, _, x, y in STAGES]
    for i in range(4):
        arrow(ax, (xy[i][0] + W / 2 + 0.05, xy[i][1]), (xy[i + 1][0] - W / 2 - 0.05, xy[i + 1][1]))
    arrow(ax, (xy[4][0], xy[4][1] - H / 2 - 0.05), (xy[5][0], xy[5][1] + H / 2 + 0.05))
    arrow(ax, (xy[5][0] - W / 2 - 0.05, xy[5][1]), (xy[6][0] + W / 2 + 0.05, xy[6][1]))
    arrow(ax, (xy[6][0] - W / 2 - 0.05, xy[6][1]), (xy[7][0] + W / 2 + 0.05, xy[7][1]))
    red = "#b23b3b"
    top = xy[3][1] + H / 2 + 0.05
    arrow(ax, (xy[3][0] - 0.2, top), (xy[2][0] + 0.2, top), bend=0.5, color=red)
    arrow(ax, (xy[3][0] + 0.2, top), (xy[1][0], top), bend=0.35, color=red)
    ax.text((xy[2][0] + xy[3][0]) / 2, top + 0.52,
            "trajectory at fault: regenerate\nfrom the verified prefix", ha="center", fontsize=7, color=red,
            style="italic")
    ax.text((xy[1][0] + xy[3][0]) / 2, top + 1.0, "script at fault: regenerate the script", ha="center",
            fontsize=7, color=red, style="italic")
    out = Path(__file__).with_suffix(".svg")
    fig.savefig(out, bbox_inches="tight", metadata={"Date": None})
    return out


if __name__ == "__main__":
    print(main())
