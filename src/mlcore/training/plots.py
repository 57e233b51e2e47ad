"""Loss curves as a PNG (matplotlib, headless): training loss per step and held-out loss per evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_loss_curves(runs: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]], path: str | Path, *,
                     title: str = "training loss") -> Path:
    """Draw one line per run's ``history`` (train loss) and markers for its ``evals`` (held-out loss).

    ``runs`` maps a label to a dict with ``history`` and optionally ``evals`` (as in ``TrainResult.to_dict()``).
    The y axis is the next-token cross-entropy in nats; the right axis reads it as perplexity.
    """
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: the caller's matplotlib backend is left alone

    if not runs:
        raise ValueError("runs is empty: nothing to plot")
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.subplots()
    for i, (label, run) in enumerate(runs.items()):
        color = f"C{i}"
        history = run.get("history", [])
        if history:
            ax.plot([h["step"] for h in history], [h["loss"] for h in history], color=color, lw=1.2,
                    alpha=0.8, label=f"{label} train")
        evals = run.get("evals", [])
        if evals:
            ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o--", color=color, ms=4,
                    label=f"{label} held-out (ppl {evals[-1]['perplexity']:.1f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    right = ax.secondary_yaxis("right", functions=(np.exp, lambda p: np.log(np.clip(p, 1e-12, None))))
    right.set_ylabel("perplexity")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
