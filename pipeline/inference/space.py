"""What a prediction folder will take on disk, estimated from the images' sizes before anything is
written: kept probabilities take 2 bytes (float16) or 1 (uint8) per class per pixel at each image's
own size (a Severstal-sized OOF set alone is ~40 GB in float16), label PNGs a small fraction of a
byte per pixel."""
from __future__ import annotations

from typing import Iterable

from pipeline.config import Config
from pipeline.data.pool import fold_indices, labelled_pool
from pipeline.data.sources import open_split
from pipeline.inference.outdir import PROBS_BYTES
from pipeline.io import space_problem

# measured: CamVid's 11-class label maps take 0.047 bytes per pixel as PNG (1.9 MB for 233 frames);
# the noisier maps of a barely trained model take more
LABEL_PNG_BYTES_PER_PIXEL = 0.1


def prediction_bytes(sizes: Iterable[tuple[int, int]], classes: int, keep_probs: bool, dtype: str = "float16") -> int:
    """Bytes of the label PNGs, and the probabilities when kept (in `dtype`), of images of these
    (height, width)."""
    pixels = sum(h * w for h, w in sizes)
    per_pixel = LABEL_PNG_BYTES_PER_PIXEL + (PROBS_BYTES[dtype] * classes if keep_probs else 0)
    return int(pixels * per_pixel)


def record_sizes(records) -> list[tuple[int, int]]:
    """(height, width) of the records whose size is known (a masks-only record has none until read)."""
    return [(r.height, r.width) for r in records if r.height and r.width]


def oof_sizes(cfg: Config, folds: Iterable[int]) -> list[tuple[int, int]]:
    """Sizes of the validation images of `folds`: what the OOF predictions cover."""
    pool, table = labelled_pool(cfg)
    return record_sizes(pool.records[i] for k in folds for i in fold_indices(table, k, str(cfg.folds_csv))[1])


def infer_expected(cfg: Config, test: list[tuple[int, int]], oof: list[tuple[int, int]]) -> tuple[int, str]:
    """(bytes, what) of `make infer-tta`'s folder for images of these sizes; probabilities with
    infer.save_probs (multilabel: always, make tune picks thresholds from them)."""
    keep, dtype = cfg.infer.save_probs or cfg.competition.multilabel, cfg.infer.probs_dtype
    what = f"infer: the predictions of {len(test)} test and {len(oof)} OOF images"
    if keep:
        what += f" with {dtype} probabilities" + (" (infer.probs_dtype=uint8 halves them)" if dtype == "float16" else "")
    return prediction_bytes(test + oof, cfg.data.num_classes, keep, dtype), what


def pseudo_expected(cfg: Config, records, keep_probs: bool) -> tuple[int, str]:
    """(bytes, what) of the pseudo-label folder of these unlabelled images."""
    sizes, dtype = record_sizes(records), cfg.infer.probs_dtype
    what = f"pseudo: the label maps of {len(sizes)} {cfg.pseudo.split} images"
    if keep_probs:
        what += f" with {dtype} probabilities"
    return prediction_bytes(sizes, cfg.data.num_classes, keep_probs, dtype), what


def planned_prediction_bytes(cfg: Config) -> tuple[int, str]:
    """(bytes, what) of the prediction folder `make infer-tta` will write for cfg's experiment with
    every fold trained, and of the pseudo-labelling pass a pseudo-labelled refit runs first; before
    folds.csv exists the OOF part counts every labelled image."""
    test = record_sizes(open_split(cfg.data, "test", labelled=False).records)
    oof = []
    if cfg.infer.oof:
        if cfg.folds_csv.exists():
            oof = oof_sizes(cfg, range(cfg.folds.k))
        else:
            oof = [s for split in ("train", "val") if getattr(cfg.data, split)
                   for s in record_sizes(open_split(cfg.data, split).records)]
    total, what = infer_expected(cfg, test, oof)
    if cfg.train.refit_pseudo:
        more, pseudo_what = pseudo_expected(cfg, open_split(cfg.data, cfg.pseudo.split, labelled=False).records,
                                            cfg.infer.refit == "with")
        total, what = total + more, f"{what}, and {pseudo_what}"
    return total, what


def outputs_space(cfg: Config) -> tuple[int, str, str | None]:
    """(bytes, what, the problem or None) of planned_prediction_bytes against the outputs disk."""
    needed, what = planned_prediction_bytes(cfg)
    return needed, what, space_problem(cfg.out_dir, needed, what)
