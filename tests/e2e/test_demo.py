"""The README's main job (`telelens demo`), minus the server start: the grid it shows is real."""

from __future__ import annotations

from pathlib import Path

import pytest

from telelens import demo

pytestmark = pytest.mark.slow


def test_demo_grid_heatmap_and_png(smollm2, tmp_path: Path, capsys):
    grid, labels = demo.run_patching(smollm2)
    assert grid.shape == (smollm2.cfg.n_layers, len(labels)) == (30, 10)
    # Early on the subject token carries the answer; by the last layers it has moved to the final position.
    assert grid[0, 3] > 0.5 and grid[-1, -1] > 0.5
    assert abs(grid[0, -1]) < 0.1 and abs(grid[-1, 3]) < 0.1
    demo.print_heatmap(grid, labels, "test")
    assert "p9" in capsys.readouterr().out
    png = demo.write_png(grid, labels, "test", tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
