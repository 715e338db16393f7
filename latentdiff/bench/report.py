"""What the benches' reports share: a headless matplotlib figure, and writing it out."""

from __future__ import annotations

from pathlib import Path


def figure(*args, **kwargs):
    """`plt.subplots(*args, **kwargs)` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as a 120-dpi PNG and close `fig`; the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
