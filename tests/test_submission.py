import numpy as np
import pandas as pd
import pytest

from pipeline.competition import rle
from pipeline.config import SubmissionConfig
from pipeline.competition.submission import encode_rows, read_submission, validate
from pipeline.errors import SubmissionError

SC = SubmissionConfig()
SIZES = {"a": (4, 5), "b": (4, 5)}
CLASSES = [0, 1]


def good_rows():
    rows = []
    for img in SIZES:
        lab = np.zeros(SIZES[img], np.uint8)
        lab[1:3, 1:4] = 1
        rows += encode_rows(img, lab, CLASSES, SC)
    return rows


def frame(rows):
    return pd.DataFrame([(i, str(c), e) for i, c, e in rows], columns=["ImageId", "ClassId", "EncodedPixels"])


def test_good_submission_parses():
    parsed = validate(frame(good_rows()), SIZES, CLASSES, SC)
    assert len(parsed) == 4
    starts, lengths = parsed[("a", 1)]
    assert lengths.sum() == 6


MALFORMED = [
    ("unknown image", lambda r: r + [("zzz", 0, "")], "line 6 .*unknown image id"),
    ("duplicate", lambda r: r + [r[0]], "duplicate row"),
    ("missing row", lambda r: r[:-1], "row\\(s\\) missing"),
    ("class not int", lambda r: [(r[0][0], "x", r[0][2])] + r[1:], "line 2 .*class id is not an integer"),
    ("class out of range", lambda r: r + [("a", 7, "")], "class 7 is not one of"),
    ("odd rle", lambda r: [(r[0][0], r[0][1], "1 2 3")] + r[1:], "odd number"),
    ("zero start", lambda r: [(r[0][0], r[0][1], "0 2")] + r[1:], "start 0 < 1"),
    ("zero length", lambda r: [(r[0][0], r[0][1], "3 0")] + r[1:], "run length 0 < 1"),
    ("unsorted", lambda r: [(r[0][0], r[0][1], "9 1 3 1")] + r[1:], "not increasing"),
    ("overlapping", lambda r: [(r[0][0], r[0][1], "1 5 3 1")] + r[1:], "overlaps"),
    ("past the end", lambda r: [(r[0][0], r[0][1], "18 5")] + r[1:], "passes the last pixel \\(20\\)"),
    ("non-integer rle", lambda r: [(r[0][0], r[0][1], "1 2.5")] + r[1:], "non-integer value '2.5'"),
]


@pytest.mark.parametrize("name,mutate,match", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_submissions_are_rejected(name, mutate, match):
    with pytest.raises(SubmissionError, match=match):
        validate(frame(mutate(good_rows())), SIZES, CLASSES, SC)


def test_bad_header_and_unreadable_file(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("ImageId,EncodedPixels\na,\n")
    with pytest.raises(SubmissionError, match="header is \\['ImageId', 'EncodedPixels'\\]"):
        read_submission(p, SC)
    with pytest.raises(SubmissionError, match="file not found"):
        read_submission(tmp_path / "nope.csv", SC)
    p.write_bytes(b"")
    with pytest.raises(SubmissionError, match="not a readable CSV"):
        read_submission(p, SC)


def test_rows_decode_back_to_the_label_map():
    lab = np.random.default_rng(0).integers(0, 3, (6, 7)).astype(np.uint8)
    rows = encode_rows("x", lab, [0, 1, 2], SC)
    for _, c, enc in rows:
        assert np.array_equal(rle.decode(enc, lab.shape, "column"), lab == c)
