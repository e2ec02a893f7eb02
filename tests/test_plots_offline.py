"""`dvc plots show` / `dvc plots diff` pages, drawn by a real headless Chromium with the network cut off.

Chromium loads the page DVC wrote (file://), runs its JavaScript, and dumps the DOM it ended with.
vega-embed 7 (inlined by .dvc/plots/offline.html) draws SVG, so the dump shows what each chart drew:
its data marks, its axes' titles (vega's aria-labels) and tick labels. A page that loads vega from a
CDN draws nothing here (test_the_check_fails_for_dvcs_default_cdn_page).

Without a Chromium the browser tests are skipped with the reason, so `make test` passes on a fresh
machine; where CI is "true" they fail instead, so CI always runs them (.ci/run installs Debian's
chromium). $CHROMIUM, when set, is the only binary looked at: CHROMIUM=/nonexistent shows what a
machine without one does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, VENV_BIN, run, set_param, stages_run

CHROMIUM_HELP = ("Chromium not found: install Debian's chromium (`apt-get install -y chromium`, what .ci/run "
                 "does) to run the browser checks that `dvc plots show` draws every chart offline, or set "
                 "CHROMIUM to a Chromium or Chrome binary (looked at {looked})")
# Any host name fails to resolve: the page must draw from what it carries.
NO_NETWORK = "--host-resolver-rules=MAP * ~NOTFOUND"
# Appended to a copy of the page: records how wide each <img> decoded (0 when it did not load).
IMAGE_PROBE = """<script>
setTimeout(function () {
  document.body.setAttribute("data-image-widths",
    Array.from(document.images).map(function (img) { return img.naturalWidth; }).join(" "));
}, 3000);
</script>
"""
# Vega marks that draw data (not axes, legends, or the invisible hover layers).
DATA_MARKS = ("mark-line", "mark-rect", "mark-symbol", "mark-area")
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def find_chromium() -> tuple[str | None, str]:
    """The Chromium binary to use, or None; and where it looked. $CHROMIUM, when set, is the only candidate."""
    if "CHROMIUM" in os.environ:
        candidates = [os.environ["CHROMIUM"]]
        looked = f"$CHROMIUM={os.environ['CHROMIUM']!r}"
    else:
        candidates = [shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"]
        looked = "`chromium` and `chromium-browser` on PATH, /usr/bin/chromium"
    found = next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)
    return found, looked


def require_chromium() -> str:
    """The Chromium binary; without one, a skip with the reason, or a failure where CI is "true"."""
    found, looked = find_chromium()
    if found is None:
        message = CHROMIUM_HELP.format(looked=looked)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}. CI must run the browser checks.", pytrace=False)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_chromium()


@dataclass
class Chart:
    svgs: int = 0
    canvases: int = 0
    drawn_marks: int = 0  # data marks with a non-empty geometry
    axes: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (X or Y, title, tick labels)
    legend_labels: list[str] = field(default_factory=list)

    def axis_labels(self, orient: str) -> dict[str, list[str]]:
        return {title: labels for o, title, labels in self.axes if o == orient}


class RenderedPage(HTMLParser):
    """What Chromium drew inside each vega chart's div, and the image widths the probe recorded."""

    def __init__(self, chart_ids: list[str]):
        super().__init__()
        self.charts = {chart_id: Chart() for chart_id in chart_ids}
        self.image_widths: list[int] | None = None
        self.open: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "body" and "data-image-widths" in attrs:
            self.image_widths = [int(w) for w in attrs["data-image-widths"].split()]
        if tag not in VOID_TAGS:
            self.open.append((tag, attrs))
        chart = self._chart()
        if chart is None:
            return
        classes = attrs.get("class", "").split()
        if tag == "svg" and "marks" in classes:
            chart.svgs += 1
        elif tag == "canvas":
            chart.canvases += 1
        elif tag == "path" and attrs.get("d", "").strip() and self._inside_data_mark():
            chart.drawn_marks += 1
        elif tag == "g" and "role-axis" in classes:
            titled = re.match(r"([XY])-axis titled '([^']*)'", attrs.get("aria-label", ""))
            if titled:
                chart.axes.append((titled.group(1), titled.group(2), []))

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        chart = self._chart()
        if chart is None or not self.open or self.open[-1][0] != "text" or not data.strip():
            return
        if self._inside("role-axis-label") and chart.axes:
            chart.axes[-1][2].append(data.strip())
        elif self._inside("role-legend-label"):
            chart.legend_labels.append(data.strip())

    def _chart(self) -> Chart | None:
        for tag, attrs in reversed(self.open):
            if tag == "div" and attrs.get("id") in self.charts:
                return self.charts[attrs["id"]]
        return None

    def _inside(self, css_class: str) -> bool:
        return any(css_class in attrs.get("class", "").split() for _, attrs in self.open)

    def _inside_data_mark(self) -> bool:
        return any(tag == "g" and "role-mark" in attrs.get("class", "").split()
                   and attrs["class"].split()[0] in DATA_MARKS for tag, attrs in self.open)


def vega_chart_ids(page_html: str) -> list[str]:
    """The div ids DVC's chart scripts hand to vegaEmbed, one per vega plot."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page_html)


def vega_plot_count(repo: Path) -> int:
    """The top-level plots of dvc.yaml that are vega charts (the others are image files)."""
    return sum(isinstance(p, dict) for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"])


def render(page: Path, chromium: str, profile: Path) -> RenderedPage:
    """Open the page in headless Chromium, offline, and read back the DOM its scripts left."""
    html = page.read_text(encoding="utf-8")
    head, body_end, tail = html.rpartition("</body>")
    probed = page.with_name("probed.html")  # beside the page, so its relative image paths still resolve
    probed.write_text(head + IMAGE_PROBE + body_end + tail, encoding="utf-8")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", f"--user-data-dir={profile}", NO_NETWORK,
         "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rendered = RenderedPage(vega_chart_ids(html))
    rendered.feed(proc.stdout)
    return rendered


def plots_page(repo: Path, out: Path, *command: str) -> Path:
    run(["dvc", "plots", *command, "-o", str(out)], repo)
    return out / "index.html"


def assert_every_chart_drawn(page: Path, rendered: RenderedPage, repo: Path, images: int) -> None:
    assert len(rendered.charts) == vega_plot_count(repo), sorted(rendered.charts)
    blank = {name: chart for name, chart in rendered.charts.items() if not (chart.svgs and chart.drawn_marks)}
    assert not blank, f"charts not drawn: {blank}"
    assert rendered.image_widths is not None and len(rendered.image_widths) == images, rendered.image_widths
    assert all(width > 0 for width in rendered.image_widths), rendered.image_widths
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", html), "the page loads a script from elsewhere"
    assert "cdn.jsdelivr" not in html


def epochs_logged(repo: Path) -> list[str]:
    rows = (repo / "metrics/train/plots/metrics/val/accuracy.tsv").read_text().splitlines()[1:]
    return [row.split("\t")[0] for row in rows]


@pytest.mark.slow
def test_plots_show_draws_every_chart_offline(chromium, repo, tmp_path):
    page = plots_page(repo, tmp_path / "plots", "show")
    rendered = render(page, chromium, tmp_path / "profile")
    assert_every_chart_drawn(page, rendered, repo, images=2)
    # Per-epoch charts: the x axis is the epoch, whole numbers only (2 epochs: 1 and 2, never 1.2).
    assert epochs_logged(repo) == ["1", "2"]
    for name in ("Loss", "Accuracy"):
        assert rendered.charts[name].axis_labels("X") == {"epoch": ["1", "2"]}, rendered.charts[name].axes
    # The confusion chart reads like confusion.png: columns are the prediction, rows the actual class.
    confusion = rendered.charts["Confusion"]
    assert list(confusion.axis_labels("X")) == ["predicted"] and list(confusion.axis_labels("Y")) == ["actual"]


@pytest.mark.slow
def test_plots_diff_draws_both_revisions_offline(chromium, repo, tmp_path):
    set_param(repo, "train", "epochs", 3)
    set_param(repo, "train", "patience", 3)
    assert stages_run(run(["dvc", "repro"], repo).stdout) == {"train", "ship", "evaluate", "predict", "card"}
    page = plots_page(repo, tmp_path / "plots", "diff", "HEAD")
    rendered = render(page, chromium, tmp_path / "profile")
    assert_every_chart_drawn(page, rendered, repo, images=4)  # each PNG at HEAD and in the workspace
    assert epochs_logged(repo) == ["1", "2", "3"]
    for name in ("Loss", "Accuracy"):
        chart = rendered.charts[name]
        assert chart.axis_labels("X") == {"epoch": ["1", "2", "3"]}, chart.axes
        assert {"HEAD", "workspace"} <= set(chart.legend_labels), chart.legend_labels


@pytest.mark.slow
def test_the_check_fails_for_dvcs_default_cdn_page(chromium, repo, tmp_path):
    """The control: DVC's own page (vega from cdn.jsdelivr.net) draws nothing here, so the tests above
    do tell an offline page from one that needs the network, and the network is really cut off."""
    from dvc_render.html import PAGE_HTML

    default_page = tmp_path / "default.html"
    default_page.write_text(PAGE_HTML, encoding="utf-8")
    page = plots_page(repo, tmp_path / "plots", "show", "--html-template", str(default_page))
    assert "cdn.jsdelivr.net" in page.read_text(encoding="utf-8")
    rendered = render(page, chromium, tmp_path / "profile")
    assert len(rendered.charts) == vega_plot_count(repo)
    assert all(chart.svgs == chart.canvases == chart.drawn_marks == 0 for chart in rendered.charts.values())
    assert rendered.image_widths and all(width > 0 for width in rendered.image_widths)  # the PNGs still show


@pytest.mark.slow
def test_the_committed_offline_page_is_current_and_configured():
    """.dvc/config names the page, and it is what `python -m pipeline.cli.plots_template` writes today
    (rerun that after upgrading vl-convert-python)."""
    proc = subprocess.run([str(VENV_BIN / "python"), "-m", "pipeline.cli.plots_template", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    configured = run(["dvc", "config", "plots.html_template"], ROOT).stdout.strip()
    assert (ROOT / ".dvc" / configured).resolve() == (ROOT / ".dvc/plots/offline.html").resolve()


def test_without_chromium_the_browser_checks_skip_outside_ci_and_fail_in_it(tmp_path, monkeypatch):
    """`make test` passes on a machine without Chromium (a skip that says why); CI cannot pass that way."""
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^Chromium not found: install Debian's chromium"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"Chromium not found: .*CI must run the browser checks"):
        require_chromium()
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(fake))
    assert require_chromium() == str(fake)
