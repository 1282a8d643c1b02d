"""The local ground truth (the organisers' labels, when a user has them) against the official test list."""
from __future__ import annotations


def truth_problems(truth_stems: list[str], test_stems: list[str], where: str) -> list[str]:
    """The local truth must be the official test list, image for image: a truth folder missing a
    test image would score a submission that also misses it as perfect."""
    problems, truth, test = [], set(truth_stems), set(test_stems)
    missing, extra = sorted(test - truth), sorted(truth - test)
    if missing:
        problems.append(f"{where}: the local truth has no label for {len(missing)} of the {len(test)} test image(s) "
                        f"(e.g. {missing[:3]}): the local score would leave them out")
    if extra:
        problems.append(f"{where}: the local truth holds {len(extra)} image(s) that are not in the test list "
                        f"(e.g. {extra[:3]})")
    return problems
