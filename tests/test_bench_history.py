"""bench.history: the committed runs load (or are skipped with a reason), and the page renders in
a real headless browser with its plot and the expected rows."""

import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from bench import history

REPO = Path(__file__).resolve().parents[1]


def _run(name, created, ours, torch, isa=("avx512f",)):
    """A results.json with one layer case (both passes) and the small epoch."""
    layers = [
        {"case": "small_conv", "pass": p, "backend": b, "status": "ok", "median": t / 2}
        for p in ("forward", "backward")
        for b, t in (("numba", ours), ("torch", torch), ("torch_cl", torch * 1.5))
    ]
    rows = [
        {"name": b, "status": "ok", "seconds_per_60k": t * 1000}
        for b, t in (("numba", ours), ("torch", torch))
    ]
    return {
        "name": name,
        "created": created,
        "commit": f"c{name[-1]}",
        "machine": {"vector_extensions": list(isa), "peak_gflops": {"float32": 150.0}, "cpu": "x"},
        "layers": layers,
        "epoch": {"archs": [{"arch": "small", "rows": rows}]},
    }


@pytest.fixture
def reports(tmp_path):
    root = tmp_path / "reports"
    for name, created, ours in (("run_b", "2026-02-01", 3.0), ("run_a", "2026-01-01", 4.0)):
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(_run(name, created, ours, 2.0)))
        (root / name / "report.md").write_text("# report\n")
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_bytes(b"\x90 not json")
    return root


def test_runs_load_in_date_order_and_unreadable_ones_are_skipped(reports):
    runs, skipped = history.load_runs(reports)
    assert [r["name"] for r in runs] == ["run_a", "run_b"]
    assert runs[1]["figures"]["layer small_conv"]["ratio"] == pytest.approx(1.5)
    assert runs[1]["figures"]["epoch small"]["backend"] == "numba"
    assert len(skipped) == 1 and "broken" in skipped[0] and "not UTF-8" in skipped[0]


def test_every_committed_report_loads():
    runs, skipped = history.load_runs(REPO / "reports")
    committed = sorted(p.parent.name for p in (REPO / "reports").glob("*/results.json"))
    assert sorted(r["name"] for r in runs) == committed and skipped == []
    assert all(r["commit"] != "—" for r in runs)


def test_cli_writes_the_page_and_the_png(reports, tmp_path, capsys):
    out, png = tmp_path / "site" / "history.html", tmp_path / "history.png"
    assert history.main([str(reports), "--out", str(out), "--png", str(png)]) == 0
    page = out.read_text()
    assert "<svg" in page
    # nothing to fetch: no scripts, style sheets or images from elsewhere
    assert "<script" not in page and "<link" not in page and 'src="http' not in page
    assert 'href="../reports/run_b/report.md"' in page
    assert matplotlib.image.imread(png).shape[0] > 100
    assert "skipped" in capsys.readouterr().out
    assert history.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("python -m bench.history: error: no readable")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium (Debian: apt-get install -y chromium)"
)
def test_the_page_renders_in_a_headless_browser(reports, tmp_path):
    out = tmp_path / "history.html"
    history.main([str(reports), "--out", str(out)])
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert '<div id="plot"><svg' in dom and "<path" in dom  # the plot's lines rendered
    assert dom.count("<tr><td>layer small_conv</td>") == 1  # the latest run's rows
    assert "<td>epoch small</td>" in dom
    assert dom.count('href="reports/run_') == 2  # a link to each run's report
