"""submissions/leaderboard.csv: one row per scored submission (CV, local score, and the public score
a user read off the competition page). People open it in spreadsheets and edit it: it is read
through one validating reader and written atomically, a row at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.io import read_json, write_text

REQUIRED = ("time", "data", "file", "local_score")
NUMERIC = ("cv_score", "local_score", "public_score", "cv_fold_std", "pixel_acc")


def read_leaderboard(path: Path) -> pd.DataFrame:
    """The table, or an empty one when the file does not exist; a malformed file is a DataError
    naming the line and the column."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(REQUIRED))
    try:
        board = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).splitlines()[0]}); fix it or move it away "
                        "(a new leaderboard starts when it is absent)") from None
    if len(board.columns) == 1 and ";" in board.columns[0]:
        raise DataError(f"{path}: columns separated by ';' (a spreadsheet's export): save it with ',' separators")
    missing = [c for c in REQUIRED if c not in board.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    for col in NUMERIC:
        if col not in board.columns:
            continue
        values = pd.to_numeric(board[col], errors="coerce")
        bad = values.isna() & board[col].notna()
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}: line {k + 2}, column {col}: {board[col].iloc[k]!r} is not a number")
        board[col] = values
    if "metric" in board:
        board["metric"] = board["metric"].fillna("miou")  # rows written before metrics were configurable
    for kind in ("cv", "local"):
        if f"{kind}_miou" in board and f"{kind}_score" in board:
            board[f"{kind}_score"] = board[f"{kind}_score"].fillna(pd.to_numeric(board[f"{kind}_miou"], errors="coerce"))
    return board


def append_row(path: Path, row: dict) -> pd.DataFrame:
    board = read_leaderboard(path)
    board = pd.concat([board, pd.DataFrame([row])], ignore_index=True) if len(board) else pd.DataFrame([row])
    write_text(path, board.to_csv(index=False))
    return board


def read_submission_meta(csv_path: Path) -> dict:
    """The .json that `make submission` writes beside a submission (experiments, folds, TTA, CV);
    {} when there is none."""
    path = Path(csv_path).with_suffix(".json")
    if not path.exists():
        return {}
    meta = read_json(path, what=" (the submission's record: fix it, or delete it to score without CV)")
    for key in ("cv_score", "cv_miou", "cv_fold_std"):
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise DataError(f"{path}: field {key!r}: expected a number, got {v!r}")
    for key in ("experiments", "folds", "tta"):
        v = meta.get(key)
        if v is not None and not isinstance(v, list):
            raise DataError(f"{path}: field {key!r}: expected a list, got {v!r}")
    return meta


# --- the public score beside CV, and the final pick -------------------------------------------

def _row_of(board: pd.DataFrame, sub: str, path: Path) -> int:
    """The leaderboard row of a submission named by its path or file name."""
    names = board["file"].astype(str)
    hits = [k for k, f in enumerate(names) if f == sub or Path(f).name == Path(sub).name]
    if not hits:
        raise DataError(f"{path}: no scored submission {sub!r} (`make score SUB=...` first; known: "
                        f"{', '.join(Path(f).name for f in names[-5:])})")
    return hits[-1]


def add_public(path: Path, sub: str, public: float, replace: bool = False) -> pd.DataFrame:
    """Records the public leaderboard score a user read off the competition page for a submission."""
    board = read_leaderboard(path)
    k = _row_of(board, sub, path)
    if not 0 <= public <= 1:
        raise DataError(f"public={public}: outside the metric's range 0..1 ({board['metric'].iloc[k]})")
    if "public_score" not in board:
        board["public_score"] = np.nan
    old = board.loc[k, "public_score"]
    if pd.notna(old) and not replace:
        raise DataError(f"{Path(board['file'].iloc[k]).name}: public score already recorded ({old}); "
                        "add replace=true to change it")
    board.loc[k, "public_score"] = public
    write_text(path, board.to_csv(index=False))
    return board


def history(board: pd.DataFrame, data: str) -> pd.DataFrame:
    """One competition's submissions: submission, experiments, folds, tta, cv, cv_std, local, public,
    and `disagrees` when a submission's public-minus-CV gap is off the history's median gap (the
    raw gap with fewer than three public scores) by more than twice the folds' spread, at least
    0.005: public-LB noise on a small share of the test set, or a leak."""
    rows = board[board["data"] == data].copy()
    for col in ("public_score", "cv_fold_std", "experiments", "folds", "tta"):
        if col not in rows:
            rows[col] = np.nan
    out = pd.DataFrame({"submission": rows["file"].map(lambda f: Path(str(f)).name),
                        "experiments": rows["experiments"].fillna(""), "folds": rows["folds"].fillna(""),
                        "tta": rows["tta"].fillna(""), "cv": rows["cv_score"], "cv_std": rows["cv_fold_std"],
                        "local": rows["local_score"], "public": rows["public_score"], "file": rows["file"]})
    # a CV and a public board differ by a steady offset (the public part is small, the CV's images
    # are not the test's); an outlier is a submission whose gap is off the history's usual gap
    gap = out["public"] - out["cv"]
    both = gap.dropna()
    usual = float(both.median()) if len(both) >= 3 else 0.0
    out["gap_vs_usual"] = gap - usual
    out["disagrees"] = out["gap_vs_usual"].abs() > (2 * out["cv_std"].fillna(0)).clip(lower=0.005) + 1e-9
    out.loc[gap.isna(), "disagrees"] = False
    return out.reset_index(drop=True)


def plot_cv_vs_public(hist: pd.DataFrame, path: Path) -> float | None:
    """CV against the public score, each point labelled, flagged points in red; returns Pearson's r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import save_figure

    both = hist.dropna(subset=["cv", "public"])
    r = float(np.corrcoef(both["cv"], both["public"])[0, 1]) if len(both) >= 3 else None
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(both["cv"], both["public"], c=["tab:red" if d else "tab:blue" for d in both["disagrees"]])
    for _, row in both.iterrows():
        run = Path(row["submission"]).stem.split("_", 1)[-1]  # <time>_<run name>.csv
        ax.annotate(run, (row["cv"], row["public"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if len(both):
        lo, hi = float(min(both["cv"].min(), both["public"].min())), float(max(both["cv"].max(), both["public"].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("CV")
    ax.set_ylabel("public leaderboard")
    ax.set_title(f"CV vs public (r = {r:.2f})" if r is not None else "CV vs public")
    save_figure(path, fig)
    plt.close(fig)
    return r


def oof_agreement(a: Path | None, b: Path | None, max_images: int = 200) -> float | None:
    """Share of pixels on which two experiments' OOF label maps agree (None when either is missing)."""
    if a is None or b is None or not a.is_dir() or not b.is_dir():
        return None
    from PIL import Image

    stems = sorted({p.name for p in a.glob("*.png")} & {p.name for p in b.glob("*.png")})[:max_images]
    if not stems:
        return None
    same = total = 0
    for s in stems:
        x, y = np.asarray(Image.open(a / s)), np.asarray(Image.open(b / s))
        if x.shape == y.shape:
            same += int((x == y).sum())
            total += x.size
    return same / total if total else None


def pick(hist: pd.DataFrame, k: int, oof_dirs: dict[str, Path | None]) -> list[dict]:
    """The final K by CV: the best CV first; then, each time, among the submissions within one CV
    spread of the best remaining CV, one of an experiment not picked yet (the lowest OOF agreement
    with those picked, when OOF predictions exist), else the best remaining CV. Never by public
    score: it is shown, and flagged when it disagrees with CV."""
    pool = hist.dropna(subset=["cv"]).sort_values("cv", ascending=False)
    if pool.empty:
        raise DataError("make pick: no scored submission with a CV score")
    picked: list[dict] = []
    for _ in range(min(k, len(pool))):
        rest = pool[~pool["file"].isin({p["file"] for p in picked})]
        best = rest.iloc[0]
        spread = float(np.nan_to_num(best["cv_std"], nan=0.0)) or 0.005
        near = rest[best["cv"] - rest["cv"] <= spread + 1e-9]
        other = near[~near["experiments"].isin({p["experiments"] for p in picked})]
        if not picked:
            row, why = best, "best CV"
        elif len(other):
            agree = {}
            for f in other["file"]:
                values = [oof_agreement(oof_dirs.get(f), oof_dirs.get(p["file"])) for p in picked]
                values = [v for v in values if v is not None]
                agree[f] = max(values) if values else None
            known = {f: a for f, a in agree.items() if a is not None}
            if known:
                f = min(known, key=known.get)
                row = other[other["file"] == f].iloc[0]
                why = (f"another experiment within the CV spread ({spread:.3f}) of the best remaining CV, "
                       f"lowest OOF agreement with the picked ({known[f]:.3f})")
            else:
                row, why = other.iloc[0], f"best CV of another experiment within the CV spread ({spread:.3f})"
        else:
            row, why = best, f"best remaining CV (no other experiment within the CV spread {spread:.3f})"
        picked.append({"submission": row["submission"], "file": row["file"], "experiments": row["experiments"],
                       "cv": float(row["cv"]), "public": None if pd.isna(row["public"]) else float(row["public"]),
                       "why": why, "public_disagrees": bool(row["disagrees"])})
    return picked
