"""Plots of the simulator's results (matplotlib, a build-time dependency: imported here only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {
    "static": "tab:blue",
    "lp": "tab:green",
    "none": "tab:gray",
    "keepalive": "tab:orange",
    "hybrid": "tab:red",
}
FIGURES = (  # file, x, y, y label
    (
        "fleet_wait_vs_idle.png",
        "buffer_idle_slot_hours",
        "p99",
        "p99 wait of requests that met a cold start (s)",
    ),
    ("fleet_wait_vs_cost.png", "cost", "p99", "p99 wait of requests that met a cold start (s)"),
    ("fleet_cold_vs_idle.png", "idle_slot_hours", "cold", "invocations that met a cold start (%)"),
)


def _family(r: dict[str, Any]) -> str:
    if r["keepalive"] == "hybrid":
        return "hybrid"
    fam = str(r["policy"]).split(":")[0].split("+")[0]
    if fam == "none" and not r["keepalive"].startswith("keepalive:60"):
        return "keepalive"
    return fam


def _label(r: dict[str, Any]) -> str:
    if "max_wait_probability" in r:
        return f"lp eps={r['max_wait_probability']:g}"
    return f"{r['policy']}@{r['wait_penalty']:g}" if "wait_penalty" in r else str(r["policy"])


def plot_results(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, *, title: str = ""
) -> list[Path]:
    """Small PNGs: cold-start p99 wait against buffer idle slot-hours and against cost; the
    share of invocations that met a cold start against all idle slot-hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, x_key, y_key, ylabel in FIGURES:
        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=80)
        for r in rows:
            y = r["cold_wait_s"]["p99"] if y_key == "p99" else r["cold_start_fraction"] * 100
            y = max(y, 1e-3)
            ax.scatter(r[x_key], y, color=COLOURS.get(_family(r), "black"), s=20)
            ax.annotate(
                _label(r), (r[x_key], y), fontsize=6, xytext=(3, 2), textcoords="offset points"
            )
        ax.set_xlabel("cost ($, measured day)" if x_key == "cost" else x_key.replace("_", " "))
        ax.set_ylabel(ylabel, fontsize=8)
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
