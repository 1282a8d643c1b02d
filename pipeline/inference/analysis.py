"""Where the CV score is lost: after the OOF predictions, a page with the worst images (image,
truth, prediction, errors in the classes' colours), per-class IoU of the pooled OOF beside each
fold's, and the class pairs most confused with each other."""
from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np

from pipeline.io import save_figure, write_text


class WorstImages:
    """Keeps the k images with the lowest mIoU, and their label maps, as they stream by."""

    def __init__(self, k: int):
        self.k, self.heap, self.seen = k, [], 0  # heap of (-miou, arrival, index, stem, pred, truth)

    def add(self, miou: float, index: int, stem: str, pred: np.ndarray, truth: np.ndarray) -> None:
        if not np.isfinite(miou) or self.k == 0:
            return
        self.seen += 1
        item = (-miou, self.seen, index, stem, pred, truth)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif -item[0] < -self.heap[0][0]:
            heapq.heapreplace(self.heap, item)

    def worst_first(self) -> list[tuple]:
        return [(-s, i, stem, p, t) for s, _, i, stem, p, t in sorted(self.heap, key=lambda x: -x[0])]


def palette(num_classes: int, ignore_index: int) -> np.ndarray:
    import matplotlib

    colours = np.zeros((256, 3), np.uint8)
    cmap = matplotlib.colormaps["tab20"]
    for c in range(num_classes):
        colours[c] = np.array(cmap(c % 20)[:3]) * 255
    colours[ignore_index] = (0, 0, 0)
    return colours


def confused_pairs(confusion: np.ndarray, classes, top: int = 8) -> list[dict]:
    """(truth, predicted) pairs with the largest share of the truth class's pixels."""
    rows = confusion.sum(1, keepdims=True)
    share = confusion / np.maximum(rows, 1)
    np.fill_diagonal(share, 0)
    order = np.dstack(np.unravel_index(np.argsort(-share, axis=None), share.shape))[0][:top]
    return [{"truth": classes[a], "predicted": classes[b], "share_of_truth": float(share[a, b]),
             "pixels": int(confusion[a, b])} for a, b in order if share[a, b] > 0]


def write_report(out: Path, worst: list[tuple], images, classes, scored, ignore_index: int, pooled, per_fold: dict,
                 confusion: np.ndarray, metric: str = "miou") -> Path:
    """`classes`: every class (colours, confusion); `scored`: the classes the metric scores, in the
    order of `pooled` and of each fold's values in `per_fold`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = palette(len(classes), ignore_index)
    lines = ["# OOF error analysis", "", f"## Worst images (OOF {metric})", "", f"| image | {metric} | panel |", "|---|---|---|"]
    for rank, (score, index, stem, pred, truth) in enumerate(worst):
        errors = np.where(truth == ignore_index, 127, np.where(pred == truth, 255, 0)).astype(np.uint8)
        err_rgb = np.stack([np.full_like(errors, 255), errors, errors], -1)  # red = wrong, white = right
        err_rgb[truth == ignore_index] = 127
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
        for ax, img, title in zip(axes, (images(index), colours[truth], colours[pred], err_rgb),
                                  ("image", "truth", "prediction", "errors (red)")):
            ax.imshow(img)
            ax.set_title(title)
            ax.axis("off")
        fig.suptitle(f"{stem}: {metric} {score:.3f}")
        name = f"worst_{rank:02d}.png"
        save_figure(out / name, fig)
        plt.close(fig)
        lines.append(f"| {stem} | {score:.3f} | ![{stem}]({name}) |")
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(scored), 3.5))
    width = 0.8 / (1 + len(per_fold))
    x = np.arange(len(scored))
    ax.bar(x, np.nan_to_num(pooled), width, label="OOF pooled")
    for j, (fold, values) in enumerate(sorted(per_fold.items()), start=1):
        ax.bar(x + j * width, np.nan_to_num(values), width, label=f"fold {fold}")
    ax.set_xticks(x + width * len(per_fold) / 2, scored, rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    save_figure(out / "iou_by_fold.png", fig)
    plt.close(fig)
    lines += ["", f"## Per-class {metric}: pooled OOF and each fold", "", "![per class by fold](iou_by_fold.png)", "",
              "| class | OOF | " + " | ".join(f"fold {f}" for f in sorted(per_fold)) + " |",
              "|---|---|" + "---|" * len(per_fold)]
    for c, name in enumerate(scored):
        cells = " | ".join(f"{per_fold[f][c]:.3f}" for f in sorted(per_fold))
        lines.append(f"| {name} | {pooled[c]:.3f} | {cells} |")
    lines += ["", "## Most confused (share of the truth class's pixels)", "", "| truth | predicted as | share | pixels |",
              "|---|---|---|---|"]
    lines += [f"| {p['truth']} | {p['predicted']} | {p['share_of_truth']:.3f} | {p['pixels']:,} |"
              for p in confused_pairs(confusion, classes)]
    return write_text(out / "report.md", "\n".join(lines) + "\n")
