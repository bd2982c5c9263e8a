"""Pictures of NIAH results: a length x depth heatmap (single-hop) or accuracy per length (multi-hop)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_summary(summary: dict, path: str | Path) -> Path:
    cells = summary["cells"]
    frames = sorted({c["frames"] for c in cells})
    depths = sorted({c["depth"] for c in cells if c["depth"] is not None})
    s = summary["settings"]
    title = (
        f"{s.get('family', '')} NIAH, {s.get('level')} level, hops={s.get('hops')}: "
        f"accuracy {summary['accuracy']:.1%} (generated {summary['accuracy_generated']:.1%})"
    )
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(frames) + 2), 3.2 if not depths else 0.6 * len(depths) + 2))
    if depths:
        grid = np.full((len(depths), len(frames)), np.nan)
        for c in cells:
            grid[depths.index(c["depth"]), frames.index(c["frames"])] = c["accuracy"]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_ylabel("needle depth")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, label="accuracy")
        ax.set_xticks(range(len(frames)), [str(f) for f in frames])
    else:
        by = summary["by_frames"]
        ax.plot(frames, [by[str(f)]["accuracy"] for f in frames], "o-", label="teacher-forced")
        ax.plot(frames, [by[str(f)]["accuracy_generated"] for f in frames], "s--", label="generated")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.legend()
    ax.set_xlabel("haystack frames")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
