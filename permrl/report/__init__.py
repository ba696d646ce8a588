"""Figures and a self-contained HTML report of training runs, ablations and demos.

- :mod:`permrl.report.figures`: one PNG per function (training curves, the paper's Figs. 3-6,
  the policy over episodes), each returning its path, or None when its data is absent.
- :mod:`permrl.report.html`: :func:`~permrl.report.html.write_report` renders a RUN_DIR, an
  ablation directory or a demo directory into one HTML file with the figures embedded.
"""
