"""What the benches' reports share: a headless matplotlib figure, and writing it out with the JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


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


def write_report(out: str | Path, stem: str, payload: dict[str, Any], draw: Callable[[Path], Any]) -> None:
    """Write `payload` as OUT/STEM.json and `draw(OUT/STEM.png)` into the folder `out` (made if needed); print both
    paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    draw(out / f"{stem}.png")
    print(f"wrote {out / f'{stem}.json'}, {out / f'{stem}.png'}")
