"""Looking at runs: `arctic runs` (one line per run folder) and `arctic report` (an HTML page of
plots, or `--text` curves for a terminal). `runs` reads the folders; `html` and `text` draw them.
"""
