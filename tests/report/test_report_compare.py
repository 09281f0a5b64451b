"""Several runs on one page, the plots chosen from the logged keys, the time breakdown, the
stacked bar chart and escaping of everything that comes from files."""

from __future__ import annotations

import json
import re

import pytest

from rlhflab.report.html import default_out, unique_names, write_report
from rlhflab.report.load import load_run
from rlhflab.report.plots import plot_groups, time_breakdown, time_totals
from rlhflab.report.sections import config_differences
from rlhflab.report.svg import PALETTE, Series, stacked_bar_chart

EVIL = "<script>alert(1)</script>"


def test_two_runs_overlay_with_one_color_each_and_a_config_diff(tmp_path, fake_run):
    a = fake_run(tmp_path / "a", steps=4, lr=1e-3)
    b = fake_run(tmp_path / "b", steps=6, lr=3e-3)
    out = write_report([a, b])
    assert out == tmp_path / "compare_a_vs_b.html"
    html = out.read_text()
    assert "Comparison of 2 runs" in html
    diff = html[html.index("<h3>Differences"):html.index("</table>", html.index("<h3>Differences"))]
    assert "<td>optim.lr</td><td>0.001</td><td>0.003</td>" in diff and "<td>max_steps</td><td>4</td><td>6</td>" in diff
    assert "batch_size" not in diff  # equal in both
    loss_svg = next(s for s in re.findall(r"<svg.*?</svg>", html) if ">loss</text>" in s)
    assert loss_svg.count("<polyline") == 2
    assert f'stroke="{PALETTE[0]}"' in loss_svg and f'stroke="{PALETTE[1]}"' in loss_svg
    assert ">a</text>" in loss_svg and ">b</text>" in loss_svg  # legend names the runs


def test_config_differences_collapse_other_algorithms_sections():
    rows = config_differences([{"algorithm": "dpo", "seed": 0, "dpo": {"beta": 0.1, "loss": "dpo"}},
                               {"algorithm": "grpo", "seed": 0, "grpo": {"epochs": 1}}])
    assert rows == [["algorithm", "dpo", "grpo"], ["dpo.*", "(2 settings)", "(absent)"],
                    ["grpo.*", "(absent)", "(1 settings)"]]


def test_unique_names_and_default_out(tmp_path):
    paths = [tmp_path / "x" / "run", tmp_path / "y" / "run"]
    assert unique_names(paths) == ["x/run", "y/run"]
    assert default_out([tmp_path / "a"]) == tmp_path / "a" / "report.html"
    assert default_out(paths) == tmp_path / "compare_run_vs_run.html"


def test_missing_metrics_omit_their_plots():
    groups, rest = plot_groups(["loss", "lr", "grad_norm", "token_accuracy", "eval/loss", "throughput/tokens_per_s"])
    charts = {c.title: c.keys for g in groups for c in g.charts}
    assert charts == {"loss": ["loss", "eval/loss"], "accuracy": ["token_accuracy"],
                      "grad_norm": ["grad_norm"], "lr": ["lr"]}
    assert rest == ["throughput/tokens_per_s"]
    groups, _ = plot_groups(["reward/mean", "gold/mean", "kl/k1", "kl/k3", "entropy", "response_length/mean"])
    charts = {c.title: (c.x_key, c.keys) for g in groups for c in g.charts}
    assert charts["proxy and gold reward against KL"] == ("kl/k1", ["reward/mean", "gold/mean"])
    assert charts["KL"] == ("step", ["kl/k1", "kl/k3"])
    assert "proxy and gold reward against KL" not in {c.title for g in plot_groups(["reward/mean", "kl/k1"])[0]
                                                      for c in g.charts}


def test_time_breakdown_other_is_step_minus_phases(tmp_path, fake_run):
    run = load_run(fake_run(tmp_path / "r", steps=3))  # generate 2.0 + update 1.0 of a 3.5 s step
    steps, table = time_breakdown(run)
    assert steps == [1.0, 2.0, 3.0]
    assert table == {"generate": [2.0] * 3, "update": [1.0] * 3, "other": [0.5] * 3}
    assert time_totals(run) == {"generate": 6.0, "update": 3.0, "other": 1.5}


def _rects(svg: str) -> list[tuple[float, float, float, float]]:
    return [tuple(map(float, m)) for m in re.findall(
        r'<rect class="bar" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)]


def test_stacked_bars_heights_are_proportional():
    svg = stacked_bar_chart([1, 2], [Series("a", [1, 2], [1.0, 3.0]), Series("b", [1, 2], [2.0, None])])
    rects = _rects(svg)
    assert len(rects) == 3  # None (and 0) draw nothing
    (x1, y1, w1, h_a1), (_, y2, _, h_b1), (_, _, _, h_a2) = rects
    assert h_a1 * 2 == pytest.approx(h_b1, abs=0.02) and h_a1 * 3 == pytest.approx(h_a2, abs=0.02)
    assert y2 + h_b1 == pytest.approx(y1, abs=0.02)  # b sits on top of a
    assert "no data" in stacked_bar_chart([1], [Series("a", [1], [0.0])])


def test_stacked_bars_average_bins_beyond_max_bars():
    x = list(range(1, 11))
    svg = stacked_bar_chart(x, [Series("a", x, [1.0] * 5 + [3.0] * 5)], max_bars=2)
    (_, _, _, h1), (_, _, _, h2) = _rects(svg)
    assert h2 == pytest.approx(3 * h1, abs=0.02)  # bins of 5 steps: means 1.0 and 3.0


def test_everything_from_files_is_escaped(tmp_path, fake_run):
    d = fake_run(tmp_path / "r", steps=3)
    (d / "samples.jsonl").write_text(json.dumps({"step": 1, "prompt": EVIL, "completion": EVIL,
                                                 "scores": {EVIL: 1.0}}) + "\n")
    (d / "warnings.jsonl").write_text(json.dumps({"step": 2, "message": EVIL}) + "\n")
    (d / "config.yaml").write_text((d / "config.yaml").read_text() + f"note: '{EVIL}'\n")
    (d / "curves.json").write_text(json.dumps([{"title": EVIL, "x_label": EVIL, "y_label": "y",
                                                "series": [{"name": EVIL, "x": [1, 2], "y": [1, 4]}]}]))
    html = write_report([d]).read_text()
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 7


def test_thin_averages_consecutive_points():
    from rlhflab.report.plots import thin

    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert thin(x, [1.0, 3.0, None, None, 2.0, float("nan")], max_points=3) == ([1.5, 3.5, 5.5], [2.0, None, 2.0])
    assert thin(x[:2], [1.0, 2.0], max_points=3) == (x[:2], [1.0, 2.0])


def test_control_characters_are_shown_as_pictures():
    from rlhflab.report.sections import esc

    assert esc("a\x03b\x00\n<\x7f") == "a\u2403b\u2400\n&lt;\u2421"
