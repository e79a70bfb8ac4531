"""The HTML report: self-contained, escaped, true to the arrays, and loading cleanly in headless Chromium."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from packsft import PackConfig, PackedOutput
from packsft.cli import main
from packsft.demo import DATA_DIR
from packsft.report.charts import bar_chart, fraction_chart
from packsft.report.html import row_figures, write_report
from packsft.report.inspect import render_chunk, tokenizer_for
from packsft.report.page import summary_html
from packsft.run import run_pack
from tests.helpers import conv, write_conversations

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
HOSTILE = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
ARTICLE = re.compile(r'<article class="chunk" id="chunk-(\d+)">(.*?)</article>', re.S)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, demo_tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("report") / "bestfit"
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), strategy="bestfit", seq_length=512)
    return run_pack(DATA_DIR, out, config, quiet=True).out_dir


@pytest.fixture(scope="module")
def demo_report(demo_out) -> Path:
    return write_report(demo_out, demo_out.parent / "report.html")


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory, demo_tokenizer_dir) -> Path:
    """A report of conversations (and a source name) that try to inject markup."""
    root = tmp_path_factory.mktemp("hostile")
    write_conversations(root / "data" / "x.parquet", [conv(("user", HOSTILE), ("assistant", "ok " + HOSTILE), source=HOSTILE)])
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), strategy="bestfit", seq_length=128)
    out = run_pack(root / "data", root / "out", config, quiet=True).out_dir
    return write_report(out, root / "report.html")


def test_report_is_self_contained(demo_report):
    page = demo_report.read_text()
    assert "http:" not in page and "https:" not in page and "url(" not in page and "@import" not in page
    assert "<link" not in page and "<iframe" not in page
    assert re.findall(r"\bsrc\s*=", page) == []
    assert set(re.findall(r'href="([^"]*)"', page)) == {"#summary", "#charts-title", "#chunks"}


def test_report_tokens_match_the_arrays(demo_report, demo_out):
    page = demo_report.read_text()
    output = PackedOutput(demo_out)
    L = output.seq_length
    articles = ARTICLE.findall(page)
    assert [int(i) for i, _ in articles] == [0, 1, 2, 3, 4]
    assert page.count('<svg class="chart"') == 3
    for index, body in articles:
        row = output.row(int(index))
        nonpad = int(row.segment_lengths.sum())
        assert body.count('<span class="t ') == L + 1
        assert body.count('class="t tr') == int(row.loss_mask.sum())
        assert body.count('class="t pd"') == L + 1 - nonpad
        assert body.count('<span class="bd">') == int((row.segment_lengths > 0).sum())
    bos = output.dataset["tokenizer"]["special_ids"]["bos"]
    # A control token's badge names its part in the template; its own text is in the tooltip.
    assert f'title="id {bos} · pos 0 · no label (row start) · &lt;|beginoftext|&gt; · BOS">BOS</span>' in articles[0][1]


def test_summary_shows_the_dataset_figures(demo_report, demo_out):
    page = demo_report.read_text()
    stats = PackedOutput(demo_out).dataset["stats"]
    assert f"<b>{100 * stats['fill']:.1f}%</b><span>fill</span>" in page
    assert f"<b>{stats['chunks']:,}</b><span>rows</span>" in page
    assert "<td>demo-chat</td>" in page and "<td>demo-tutor</td>" in page
    assert "L = 512" in page and f"over all {stats['chunks']:,} rows" in page


def test_summary_tolerates_missing_and_none_keys():
    page = summary_html({"stats": {"fill": None, "per_source": {"a": {}}}, "tokenizer": {"special_ids": {"bos": None}}})
    assert "<b>n/a</b><span>fill</span>" in page and "<td>a</td><td>n/a</td>" in page


def test_hostile_text_is_escaped(hostile_report):
    page = hostile_report.read_text()
    assert page.count("<script") == 2  # the report's own two scripts, nothing from the data
    assert "<img" not in page and "window.pwned=1</script>" not in page
    assert "<td>&lt;/script&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;img src=x onerror=&quot;" in page


def test_row_figures_average_to_the_dataset_figures(demo_out):
    output = PackedOutput(demo_out)
    rows, fill, trained = row_figures(output)
    assert len(rows) == len(output)
    assert fill.mean() == pytest.approx(output.dataset["stats"]["fill"], abs=1e-6)
    assert trained.mean() == pytest.approx(output.dataset["stats"]["trained_fraction"], abs=1e-6)
    rows, fill, trained = row_figures(output, max_rows=10)
    assert rows.tolist() == np.linspace(0, len(output) - 1, 10).astype(int).tolist()
    row = output.row(int(rows[3]))
    assert fill[3] == row.segment_lengths.sum() / (output.seq_length + 1)
    assert trained[3] == row.loss_mask.sum() / output.seq_length


def test_long_chunks_fold(demo_out, tmp_path):
    page = write_report(demo_out, tmp_path / "r.html", chunks=[2], fold_at=100).read_text()
    body = ARTICLE.findall(page)[0][1]
    shown, folded = body.split('<details class="fold">')
    assert shown.count('<span class="t ') == 100 and folded.count('<span class="t ') == 413
    assert "<summary>show the other 413 tokens (positions 100–512)</summary>" in folded


def test_bar_chart_bins_and_tooltips():
    svg = bar_chart([1, 3, 0], [0, 256, 512, 768], label=lambda v: f"{v:.0f}", x_title="len", open_ended=True,
                    marker=(300, "L = 300"))
    assert re.findall(r"<title>(.*?)</title>", svg) == ["0 – 256: 1", "256 – 512: 3", "≥ 512: 0"]
    assert svg.count('<rect class="bar"') == 3 and ">L = 300</text>" in svg
    assert re.findall(r"<title>(.*?)</title>", fraction_chart(np.array([0.0, 0.5, 1.0, 1.0]), x_title="f", bins=2)) == [
        "0% – 50%: 1", "50% – 100%: 3"]


# --- CLI -----------------------------------------------------------------------------------------


def run(*args: str, color: bool = False) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), color=color)
    return result.exit_code, result.output


def test_report_cli(demo_out, tmp_path):
    code, output = run("report", str(demo_out), "-o", str(tmp_path / "r.html"), "--chunk", "7", "--chunk", "3")
    assert code == 0 and output == f"wrote {tmp_path / 'r.html'}\n"
    assert [i for i, _ in ARTICLE.findall((tmp_path / "r.html").read_text())] == ["7", "3"]
    assert run("report", str(demo_out), "-o", str(tmp_path / "r.html"), "--chunks", "2")[0] == 0
    assert len(ARTICLE.findall((tmp_path / "r.html").read_text())) == 2
    code, output = run("report", str(demo_out), "--chunks", "2", "--chunk", "1")
    assert code == 2 and "pass --chunks N or --chunk I, not both" in output
    code, output = run("report", str(demo_out), "-o", str(tmp_path / "x.html"), "--chunk", "999")
    last = len(PackedOutput(demo_out)) - 1
    assert code == 1 and output.strip() == f"Error: chunk 999 does not exist; this output has chunks 0..{last}"
    assert not (tmp_path / "x.html").exists()


def test_inspect_colours_only_when_asked_or_in_a_terminal(demo_out):
    output = PackedOutput(demo_out)
    tok = tokenizer_for(output)
    plain = render_chunk(output, 0, tok, tokens=True)
    coloured = render_chunk(output, 0, tok, tokens=True, color=True)
    assert render_chunk(output, 0, tok, tokens=True, color=False) == plain
    assert click.unstyle(coloured) == plain and "\x1b[32m" in coloured and "\x1b[2m" in coloured
    assert "\x1b" not in run("inspect", str(demo_out))[1]  # CliRunner's stdout is not a terminal
    assert "\x1b" not in run("inspect", str(demo_out), "--no-color", color=True)[1]
    assert "\x1b[32m" in run("inspect", str(demo_out), "--color", color=True)[1]


# --- headless Chromium ---------------------------------------------------------------------------


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium); the browser test needs it")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args,
               page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.slow
def test_report_loads_in_chromium_without_errors(demo_report, tmp_path):
    result = chromium(tmp_path, demo_report, "--dump-dom")
    dom = result.stdout
    assert re.search(r'<html lang="en" data-errors="0">', dom), re.findall(r"data-error-text=\"[^\"]*\"", dom)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-chunk-views="5"' in body and 'data-charts="3"' in body and 'data-ready="1"' in body
    assert 'data-tokens="2565"' in body  # 5 chunks x (L+1 = 513) token spans
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []

    shot = tmp_path / "report.png"
    chromium(tmp_path, demo_report, f"--screenshot={shot}", "--window-size=1280,2000")
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 2000)


@pytest.mark.slow
def test_chromium_check_catches_errors_and_injection(hostile_report, tmp_path):
    dom = chromium(tmp_path, hostile_report, "--dump-dom").stdout
    assert 'data-errors="0"' in dom and "<img" not in dom and "pwned" in dom  # shown as text, never run
    broken = tmp_path / "broken.html"
    broken.write_text(hostile_report.read_text().replace("</body>", '<script>console.error("deliberate")</script></body>'))
    dom = chromium(tmp_path, broken, "--dump-dom").stdout
    assert 'data-errors="1"' in dom and 'data-error-text="deliberate"' in dom
