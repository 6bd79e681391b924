"""Training-time pictures of a run: the preview grid every ``preview_every`` steps and the GIF of them.

``previews/step_XXXXXXX.png``: rows of inputs, reconstructions G(E(x)), |x - G(E(x))| (channel mean)
and samples G(z); ``previews.gif``: the previews in step order. Headless (matplotlib Agg). The figures
of finished runs are :mod:`cbigan.reporting.plots` (data) and :mod:`cbigan.reporting.figures` (drawing).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cbigan.reporting.figures import to_display  # noqa: E402
from cbigan.core.runfolder import PREVIEWS, PREVIEWS_GIF, write_atomic  # noqa: E402


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
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path


def preview_steps(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``previews/step_XXXXXXX.png`` of a run as (step, path), in step order."""
    out = []
    for p in (Path(run_dir) / PREVIEWS).glob("step_*.png"):
        try:
            out.append((int(p.stem.split("_", 1)[1]), p))
        except ValueError:
            continue
    return sorted(out)


def make_preview_gif(run_dir: str | Path, max_frames: int = 60, frame_ms: int = 300,
                     last_ms: int = 2000, max_width: int = 1024) -> Path | None:
    """Animate the run's previews (in step order) into ``<run>/previews.gif``; None if there are none.

    At most ``max_frames`` frames, evenly spaced over training, always the first and the last; frames
    wider than ``max_width`` pixels are scaled down; the last frame is held ``last_ms``.
    """
    from PIL import Image

    previews = preview_steps(run_dir)
    if not previews:
        return None
    if len(previews) > max_frames:
        keep = np.unique(np.linspace(0, len(previews) - 1, max_frames).round().astype(int))
        previews = [previews[i] for i in keep]
    frames, size = [], None
    for _, path in previews:
        with Image.open(path) as im:
            im = im.convert("RGB")
        if size is None:
            w, h = im.size
            size = (w, h) if w <= max_width else (max_width, max(1, round(h * max_width / w)))
        if im.size != size:
            im = im.resize(size, Image.LANCZOS)
        frames.append(im)
    durations = [frame_ms] * (len(frames) - 1) + [last_ms]
    return write_atomic(Path(run_dir) / PREVIEWS_GIF, lambda tmp: frames[0].save(
        tmp, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0))
