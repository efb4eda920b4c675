"""Reports of training runs: the zero-shot baseline, an HTML page and a Markdown summary.

`softprompt baseline CONFIG` saves the frozen model's answers beside a run
(`report.baseline`); `softprompt report RUN_DIR` reads the run's files
(`report.data`), draws its figures (`report.plots`) and writes one self-contained
page (`report.html`) and `report.md` (`report.summary`); `report.build` ties them.
"""
