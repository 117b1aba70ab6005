"""Plots of the simulator's results (matplotlib, a build-time dependency: imported here only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_results(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, *, title: str = ""
) -> list[Path]:
    """Two small PNGs: cold-start p99 wait vs idle slot-hours, and cold-start share vs cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    families = {
        "static": "tab:blue",
        "lp": "tab:green",
        "none": "tab:gray",
        "keepalive": "tab:orange",
        "hybrid": "tab:red",
    }
    paths = []
    for name, x_key, y_key, ylabel, logy in (
        ("fleet_wait_vs_idle.png", "buffer_idle_slot_hours", ("cold_wait_s", "p99"),
         "p99 wait of requests that met a cold start (s)", True),
        ("fleet_cold_vs_cost.png", "idle_slot_hours", ("cold_start_fraction", None),
         "invocations that met a cold start (%)", True),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
        for r in rows:
            fam = r["policy"].split(":")[0].split("+")[0]
            if r["keepalive"] == "hybrid":
                fam = "hybrid"
            elif fam == "none" and not r["keepalive"].startswith("keepalive:60"):
                fam = "keepalive"
            y = r[y_key[0]][y_key[1]] if y_key[1] else r[y_key[0]] * 100
            ax.scatter(r[x_key], max(y, 1e-3), color=families.get(fam, "black"), s=22)
            ax.annotate(
                r["policy"],
                (r[x_key], max(y, 1e-3)),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        ax.set_xlabel(x_key.replace("_", " "))
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = out / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
