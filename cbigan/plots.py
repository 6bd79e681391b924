"""Figures (headless, matplotlib Agg): training previews of inputs, reconstructions, differences, samples."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def to_display(x) -> np.ndarray:
    """[-1, 1] floats -> [0, 1] floats for imshow."""
    return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def save_preview(path: Path, inputs, reconstructions, differences, samples, title: str = "") -> Path:
    """Rows: inputs, reconstructions G(E(x)), |x - G(E(x))| (channel mean), samples G(z)."""
    rows = [("input", to_display(inputs), None), ("reconstruction", to_display(reconstructions), None),
            ("|difference|", np.asarray(differences), "inferno"), ("sample G(z)", to_display(samples), None)]
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.7 * len(rows)), squeeze=False)
    vmax = float(np.max(differences)) if np.size(differences) else 1.0
    for r, (name, images, cmap) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                if cmap:
                    ax.imshow(images[c], cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-6))
                else:
                    ax.imshow(images[c])
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
