"""Figures of the benchmark reports: matplotlib without a display, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwdsa._io import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on a server or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG atomically (a reader never sees half a file) and release it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
