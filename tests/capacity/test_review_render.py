"""The yearly review rendered offline from recorded data: sections, figures,
obsolete candidates, escaping."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from capacity_conftest_helpers import run_cli
from capacity_synthetic import epoch, linear, samples, series
from moodleops.capacity.history import append_snapshots
from moodleops.capacity.review import BinItem, CourseInfo, ReviewData

NOW = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp())
DAY = 86400


def _data() -> ReviewData:
    return ReviewData(
        school="ifsi_millau", taken_at=NOW, source="recorded", logical_bytes=12_500_000_000,
        courses=(
            CourseInfo(1, "ANAT1", "Anatomie 1", True, NOW - 900 * DAY, 4_000_000_000, NOW - 2 * DAY),
            CourseInfo(2, "OLD2019", "Ancien cours <script>alert(1)</script>", True, NOW - 2000 * DAY,
                       2_500_000_000, NOW - 500 * DAY),
            CourseInfo(3, "NEVER", "Jamais ouvert", False, NOW - 800 * DAY, 1_000_000, None),
            CourseInfo(4, "NEW", "Nouveau", True, NOW - 10 * DAY, 5_000_000, None),   # new: not obsolete
        ),
        recyclebin=(
            BinItem("category", "IFSI Millau", "PHARMA Pharmacologie", NOW - 90 * DAY, 700_000_000),
            BinItem("course", "ANAT1", "Quiz semaine 3", NOW - 3 * DAY, 1_000),          # recent: not listed
        ),
        accounts={"members": 178, "suspended": 4, "never_logged_in": 9, "inactive": 12},
        account_types={"student": 160, "trainer": 17, "referent": 1},
    )


def test_review_from_recorded_data(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(_data().to_json())
    hist = tmp_path / "h.csv"
    append_snapshots(hist, samples(series("ifsi_millau", date(2024, 9, 1), 630, linear(8e9, 7e6))))
    out = tmp_path / "out"
    code, _stdout, err = run_cli("capacity", "review", "--school", "ifsi_millau", "--data", str(data),
                                "--history", str(hist), "--out", str(out))
    assert code == 0, err
    html = (out / "review-ifsi_millau-2026-06-01.html").read_text()
    assert "<h1>Capacity review IFSI Millau</h1>" in html
    # Usage: last history value 8 GB + 629 x 7 MB = 12.40 GB, against 41 GB.
    assert "<td>content stored now</td><td>12.40 GB</td>" in html
    assert "<td>share of the threshold</td><td>30%</td>" in html
    # Growth: 365 days x 7 MB = 2.56 GB.
    assert "2.56 GB over the last 365 days" in html
    # The trend reaches 41 GB after (41 - 8) / 0.007 = 4714 days: beyond the agreement.
    assert "not before 2029-08-31 (end of the agreement)" in html
    assert html.count("<svg") == 1 and 'class="history"' in html and 'class="band"' in html
    # Largest first; obsolete: not opened for a year and older than a year.
    assert html.index("ANAT1") < html.index("OLD2019")
    obsolete = html.split("Courses not visited for 365 days")[1].split("<h3>")[0]
    assert "OLD2019" in obsolete and "NEVER" in obsolete and "ANAT1" not in obsolete and "NEW" not in obsolete
    binned = html.split("Recycle-bin items older than 30 days")[1].split("</table>")[0]
    assert "PHARMA Pharmacologie" in binned and "Quiz semaine 3" not in binned
    assert "<td>account type: student</td><td>160</td>" in html and "<td>suspended</td><td>4</td>" in html
    # Names from Moodle are escaped.
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_review_without_enough_history_still_renders(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(_data().to_json())
    hist = tmp_path / "h.csv"
    append_snapshots(hist, samples(series("ifsi_millau", date(2026, 5, 25), 3, linear(8e9, 7e6))))
    code, _, err = run_cli("capacity", "review", "--school", "ifsi_millau", "--data", str(data),
                           "--history", str(hist), "--out", str(tmp_path / "o"))
    assert code == 0, err
    html = next((tmp_path / "o").glob("*.html")).read_text()
    assert "No forecast: history of &#39;ifsi_millau&#39; is too short" in html


def test_review_data_of_another_school_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(_data().to_json())
    code, _, err = run_cli("capacity", "review", "--school", "ifms_lot", "--data", str(data),
                           "--out", str(tmp_path / "o"))
    assert code == 2 and "holds the data of 'ifsi_millau', not 'ifms_lot'" in err


def test_epoch_helper_is_utc() -> None:
    assert epoch(date(2026, 6, 1)) == NOW
