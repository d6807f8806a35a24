"""gate stage: release rules over the eval report of the exact bundle (decide.py), any report
metric by path (rules.py), regressions against the latest release of the suite compared item by
item (baseline.py, items.py, paired.py, regression.py); run.py gathers the inputs. Fails closed."""

from pipeline.gate.decide import decide, render_markdown
from pipeline.gate.rules import Rule
from pipeline.gate.run import run_gate
from pipeline.report_paths import expand, read_value

__all__ = ["Rule", "decide", "expand", "read_value", "render_markdown", "run_gate"]
