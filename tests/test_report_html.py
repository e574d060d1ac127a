"""The report page written by ``bise prune`` (and served at /v1/jobs/{id}/report.html):
self-contained, with the numbers and the three plots."""

from __future__ import annotations

import re

from tests.test_cli import prune_quick


def test_report_page_has_numbers_and_plots_and_no_external_assets(archive_factory, tmp_path):
    report = prune_quick(archive_factory("cnn"), tmp_path)
    html = (tmp_path / "report.html").read_text()
    for figure in ("learning-curves", "group-accuracy", "layer-sparsity"):
        body = html.split(f'<figure id="{figure}">', 1)[1].split("</figure>", 1)[0]
        assert body.lstrip().startswith("<svg") and "<path" in body, figure
    test = report["pruned"]["test"]
    assert f"{100 * test['unbiased_accuracy']:.1f}%" in html
    assert f"{100 * report['vanilla']['test']['unbiased_accuracy']:.1f}%" in html
    assert report["verdict"] in html
    for layer in report["sparsity"]["layers"]:
        assert layer["name"] in html
    # nothing is fetched from elsewhere: no scripts, stylesheets or images by URL
    assert not re.search(r"<(script|link|img)\b", html)
    assert not re.search(r"(src|href)=[\"']https?://", html)


def test_layer_names_are_escaped():
    from bise_core.report_html import render_report_html

    html = render_report_html({"sparsity": {"layers": [{"name": "<script>x</script>", "kept": 1, "total": 2}]}})
    assert "<script>x" not in html and "&lt;script&gt;" in html


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def test_report_page_renders_in_headless_chromium(archive_factory, tmp_path):
    """The page as a browser shows it: the DOM keeps the plots and numbers, and the
    screenshot is a real picture (not a blank or error page)."""
    import shutil
    import subprocess

    from PIL import Image, ImageStat

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: scripts/test.sh installs it (scripts/browser.sh)"
    report = prune_quick(archive_factory("cnn"), tmp_path / "out")
    page = (tmp_path / "out" / "report.html").as_uri()
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<svg") >= 3 and "Vanilla vs pruned" in dom
    assert f"{100 * report['pruned']['test']['unbiased_accuracy']:.1f}%" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400", page], capture_output=True,
                   timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2400)
    # a rendered page of tables and plots has real contrast; a blank page has none
    assert ImageStat.Stat(image).stddev[0] > 20
    dark = sum(image.histogram()[:100])
    assert dark > 0.01 * image.size[0] * image.size[1]
