"""EDA: class frequency (pixels, images, instances) and multi-label pixel overlaps.

COCO figures are exact at full resolution and computed in RLE space (unions and intersections
with pycocotools), so large annotation files need no decoded masks."""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pipeline.config import Config, StageArgs
from pipeline.data.coco import CocoSet, ann_to_rle, load_coco
from pipeline.data.overlap import paint_order
from pipeline.data.stats import LabelStats, check_label_share
from pipeline.data.sources import MaskDirSource, open_split, read_image
from pipeline.io import save_figure, write_json, write_text

log = logging.getLogger(__name__)
COMPARED_POLICIES = ("area_desc", "ignore")  # each against 'order' (later annotation wins)


def coco_summary(coco: CocoSet, progress: bool = False, priority: list[int] | None = None) -> dict:
    cats = {cid: {"id": cid, "name": name, "annotations": 0, "images": 0, "area_sum": 0.0, "pixels": 0}
            for cid, name in sorted(coco.categories.items())}
    pairs: Counter = Counter()
    ml_images = ml_pixels = 0
    policies = list(COMPARED_POLICIES) + (["priority"] if priority else [])
    changed = dict.fromkeys(policies, 0)
    classes_per_image, sizes = [], []
    for img in tqdm(coco.images, desc="eda", disable=None if progress else True, leave=False):
        anns = coco.anns.get(img.id, [])
        sizes.append((img.height, img.width))
        rles = [ann_to_rle(a, img.height, img.width) for a in anns]
        by_cat: dict[int, list] = {}
        for a, r in zip(anns, rles):
            c = cats[a["category_id"]]
            c["annotations"] += 1
            c["area_sum"] += float(a["area"]) if "area" in a else float(mask_utils.area(r))
            by_cat.setdefault(a["category_id"], []).append(r)
        classes_per_image.append(len(by_cat))
        union = {cid: mask_utils.merge(rs) if len(rs) > 1 else rs[0] for cid, rs in by_cat.items()}
        for cid, r in union.items():
            cats[cid]["images"] += 1
            cats[cid]["pixels"] += int(mask_utils.area(r))
        inters = []
        for a, b in itertools.combinations(sorted(union), 2):
            inter = mask_utils.merge([union[a], union[b]], intersect=True)
            n = int(mask_utils.area(inter))
            if n:
                pairs[(a, b)] += n
                inters.append(inter)
        if inters:
            multi = mask_utils.merge(inters) if len(inters) > 1 else inters[0]
            ml_images += 1
            ml_pixels += int(mask_utils.area(multi))
            for policy, n in _policy_changes(anns, rles, multi, policies, priority or [], int(mask_utils.area(multi))).items():
                changed[policy] += n
    return {
        "num_images": len(coco.images),
        "num_annotations": sum(c["annotations"] for c in cats.values()),
        "num_categories": len(cats),
        "categories": list(cats.values()),
        "overlap": {"images_with_multilabel_pixels": ml_images, "multilabel_pixels": ml_pixels,
                    "pairs": [{"a": a, "b": b, "pixels": n} for (a, b), n in sorted(pairs.items())],
                    "policy_pixels_changed_vs_order": changed},
        "classes_per_image": classes_per_image,
        "image_sizes": sizes,
    }


def _policy_changes(anns, rles, multi_rle, policies, priority, multi_pixels: int) -> dict[str, int]:
    """Pixels whose label under each policy differs from 'order', exactly and in RLE space.

    Under a paint order, annotation i labels the pixels of R_i not covered by any annotation
    painted after it (U_i). Pixels labelled by i under one order and by j under another are
    R_i & R_j minus (U_i | U'_j); they change label when i and j have different categories."""
    cls = [int(a["category_id"]) for a in anns]
    areas = [float(mask_utils.area(r)) for r in rles]
    n = len(anns)

    def later(order):  # annotation -> indices painted after it
        pos = {a: k for k, a in enumerate(order)}
        return [[j for j in range(n) if pos[j] > pos[i]] for i in range(n)]

    pair = {}
    for i, j in itertools.combinations(range(n), 2):
        if cls[i] != cls[j]:
            inter = mask_utils.merge([rles[i], rles[j]], intersect=True)
            if mask_utils.area(inter):
                pair[(i, j)] = pair[(j, i)] = inter
    base = later(paint_order(cls, areas, "order"))
    out = {}
    for policy in policies:
        if policy == "ignore":  # every multi-label pixel becomes the ignore index
            out[policy] = multi_pixels
            continue
        other = later(paint_order(cls, areas, policy, priority))
        changed = 0
        for (i, j), inter in pair.items():  # i labels the pixel under 'order', j under the policy
            cover = sorted(set(base[i]) | set(other[j]))
            if i in other[j] or j in base[i]:
                continue  # j is painted over by i under the policy (or i by j under 'order')
            if not cover:
                changed += int(mask_utils.area(inter))
                continue
            union = mask_utils.merge([rles[k] for k in cover]) if len(cover) > 1 else rles[cover[0]]
            hidden = mask_utils.merge([inter, union], intersect=True)
            changed += int(mask_utils.area(inter)) - int(mask_utils.area(hidden))
        out[policy] = changed
    return out


def maskdir_summary(src: MaskDirSource, classes, progress: bool = False) -> dict:
    c = len(classes)
    pixels, images = np.zeros(c, np.int64), np.zeros(c, np.int64)
    classes_per_image, sizes, ignored, multi_pixels, multi_images = [], [], 0, 0, 0
    for i in tqdm(range(len(src)), desc="eda", disable=None if progress else True, leave=False):
        m = src.mask(i)
        if src.multilabel:  # pixels with more than one class bit
            n = sum(int(np.count_nonzero(((b & (b - 1)) != 0) & (b != src.ignore_index))) for b in np.array_split(m, 8))
            multi_pixels, multi_images = multi_pixels + n, multi_images + (n > 0)
        sizes.append(m.shape)
        ignored += int(np.count_nonzero(m == src.ignore_index))
        counts = src.class_pixels(m)
        pixels += counts
        images += counts > 0
        classes_per_image.append(int((counts > 0).sum()))
    cats = [{"id": k, "name": n, "annotations": int(images[k]), "images": int(images[k]),
             "area_sum": float(pixels[k]), "pixels": int(pixels[k])} for k, n in enumerate(classes)]
    return {"num_images": len(src), "num_annotations": int(images.sum()), "num_categories": c,
            "categories": cats,
            "overlap": {"images_with_multilabel_pixels": multi_images, "multilabel_pixels": multi_pixels, "pairs": [],
                        "policy_pixels_changed_vs_order": {}},
            "classes_per_image": classes_per_image, "image_sizes": [list(s) for s in sizes],
            "ignored_pixels": ignored, "total_pixels": int(sum(h * w for h, w in sizes))}


def _thumbnail(image: np.ndarray, mask: np.ndarray, title: str, side: int = 1024):
    """A sample drawn at most `side` pixels long (every k-th pixel): four slides kept whole for a
    3-inch figure would hold gigabytes."""
    k = max(1, -(-max(mask.shape) // side))
    return image[::k, ::k].copy(), mask[::k, ::k].copy(), title


def _plots(summary: dict, out: Path, samples) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    cats = summary["categories"]
    names = [c["name"] for c in cats]
    tall = max(3.0, 0.22 * len(names))

    def bar(fname, values, title, xlabel):
        fig, ax = plt.subplots(figsize=(7, tall))
        ax.barh(names, values)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        save_figure(out / fname, fig)
        plt.close(fig)
        made.append(fname)

    total = max(sum(c["pixels"] for c in cats), 1)
    bar("pixel_share.png", [100 * c["pixels"] / total for c in cats], "Pixel share per class", "% of labelled pixels")
    bar("instances.png", [c["annotations"] for c in cats], "Instances (annotations) per class", "annotations")
    bar("images_per_class.png", [c["images"] for c in cats], "Images containing each class", "images")

    fig, ax = plt.subplots(figsize=(5, 4))
    hw = np.array(summary["image_sizes"]).reshape(-1, 2)
    ax.scatter(hw[:, 1], hw[:, 0], s=8, alpha=0.5)
    ax.set_xlabel("width")
    ax.set_ylabel("height")
    ax.set_title("Image sizes")
    save_figure(out / "image_sizes.png", fig)
    plt.close(fig)
    made.append("image_sizes.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    cpi = summary["classes_per_image"]
    ax.hist(cpi, bins=np.arange(0, max(cpi + [1]) + 2) - 0.5)
    ax.set_xlabel("classes in the image")
    ax.set_ylabel("images")
    ax.set_title("Classes per image")
    save_figure(out / "classes_per_image.png", fig)
    plt.close(fig)
    made.append("classes_per_image.png")

    pairs = summary["overlap"]["pairs"]
    if pairs:
        ids = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
        pos = {cid: k for k, cid in enumerate(ids)}
        grid = np.zeros((len(ids), len(ids)))
        for p in pairs:
            grid[pos[p["a"]], pos[p["b"]]] = grid[pos[p["b"]], pos[p["a"]]] = p["pixels"]
        label = {c["id"]: c["name"] for c in cats}
        size = max(4.0, 0.3 * len(ids))
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(np.log10(grid + 1), cmap="magma")
        ax.set_xticks(range(len(ids)), [label[i] for i in ids], rotation=90, fontsize=7)
        ax.set_yticks(range(len(ids)), [label[i] for i in ids], fontsize=7)
        fig.colorbar(im, ax=ax, label="log10(pixels claimed by both + 1)")
        ax.set_title("Multi-label pixels per category pair")
        save_figure(out / "overlap_heatmap.png", fig)
        plt.close(fig)
        made.append("overlap_heatmap.png")

    if samples:
        fig, axes = plt.subplots(1, len(samples), figsize=(3 * len(samples), 3))
        for ax, (img, mask, title) in zip(np.atleast_1d(axes), samples):
            ax.imshow(img)
            ax.imshow(np.ma.masked_equal(mask, 0), alpha=0.5, cmap="tab20", interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        save_figure(out / "samples.png", fig)
        plt.close(fig)
        made.append("samples.png")
    return made


def _report(summary: dict, plots: list[str], source: str) -> str:
    o = summary["overlap"]
    total = max(sum(c["pixels"] for c in summary["categories"]), 1)
    lines = [f"# EDA: {source}", "",
             f"- images: {summary['num_images']}, annotations: {summary['num_annotations']}, "
             f"categories: {summary['num_categories']}",
             f"- images with multi-label pixels: {o['images_with_multilabel_pixels']}; "
             f"multi-label pixels: {o['multilabel_pixels']:,}", ""]
    dup = summary.get("duplicate_annotation_ids")
    if dup:
        lines += [f"**Warning:** {len(dup)} annotation id(s) are used more than once (e.g. {dup[:5]}). segpipe "
                  "does not depend on annotation ids, but pycocotools' `COCO` index keeps only the last "
                  "annotation of each id, so `loadAnns` returns the wrong annotation for them.", ""]
    if o.get("policy_pixels_changed_vs_order"):
        lines += ["Pixels whose training label changes with the overlap policy (against `order`, later annotation wins):", ""]
        lines += [f"- `{p}`: {n:,}" for p, n in o["policy_pixels_changed_vs_order"].items()] + [""]
    lines += ["| id | class | annotations | images | pixels | pixel share | COCO area sum |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for c in summary["categories"]:
        lines.append(f"| {c['id']} | {c['name']} | {c['annotations']} | {c['images']} | {c['pixels']:,} | "
                     f"{100 * c['pixels'] / total:.2f}% | {c['area_sum']:,.0f} |")
    if o["pairs"]:
        names = {c["id"]: c["name"] for c in summary["categories"]}
        top = sorted(o["pairs"], key=lambda p: -p["pixels"])[:15]
        lines += ["", "Top overlapping category pairs:", "", "| a | b | pixels |", "|---|---|---:|"]
        lines += [f"| {names[p['a']]} | {names[p['b']]} | {p['pixels']:,} |" for p in top]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def run(cfg: Config, args: StageArgs = StageArgs(), *, split: str = "train") -> dict:
    out = cfg.out_dir / "eda"
    sc = getattr(cfg.data, split)
    root = Path(cfg.data.root)
    samples = []
    if cfg.data.format == "coco":
        coco = load_coco(root / sc.annotations, root / (sc.images or "."), cfg.data.strict)
        prio = []
        if cfg.data.priority:
            names = {n: cid for cid, n in coco.categories.items()}
            prio = [names[n] for n in cfg.data.priority if n in names]
        summary = coco_summary(coco, cfg.runtime.progress, prio)
        if coco.skipped:
            summary["skipped_records"] = coco.skipped
        summary["duplicate_annotation_ids"] = coco.duplicate_annotation_ids
        source = str(root / sc.annotations)
        images_exist = bool(coco.images) and coco.images[0].path is not None and coco.images[0].path.exists()
        if images_exist and cfg.data.classes:
            src = open_split(cfg.data, split)
            for i in range(min(4, len(src))):
                samples.append(_thumbnail(src.image(i), src.mask(i), src.records[i].stem))
    else:
        src = open_split(cfg.data, split)
        summary = maskdir_summary(src, cfg.data.classes, cfg.runtime.progress)
        source = str(root / (sc.masks or ""))
        for i in range(min(4, len(src))):
            if src.records[i].path is not None:
                samples.append(_thumbnail(read_image(src.records[i].path), src.mask(i), src.records[i].stem))
    plots = _plots(summary, out, samples)
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", _report(summary, plots, source))
    if "ignored_pixels" in summary:  # written first, so the numbers behind the stop can be read
        stats = LabelStats(np.array([c["pixels"] for c in summary["categories"]]), np.zeros(0),
                           summary["ignored_pixels"], summary["total_pixels"])
        check_label_share(stats, cfg.data.classes, cfg.data.ignore_index, source)
    o = summary["overlap"]
    log.info("eda: %d images, %d annotations, %d categories; %d images with %s multi-label pixels -> %s",
             summary["num_images"], summary["num_annotations"], summary["num_categories"],
             o["images_with_multilabel_pixels"], f"{o['multilabel_pixels']:,}", out)
    return summary
