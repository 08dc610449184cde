"""mmimb.quality: the quality benchmark, a matrix of methods x seeds judged against baselines.

- :mod:`mmimb.quality.matrix`: the matrix file (tables of rows = configs x seeds) and the
  check that every method is trained and evaluated like its baseline;
- :mod:`mmimb.quality.runs`: one training process at a time, resumable, records per run;
- :mod:`mmimb.quality.tables`: mean and spread over seeds, paired differences to the baseline,
  Markdown / CSV / JSON tables and a plot.

``benchmarks/quality.py`` is the command line.
"""

from mmimb.quality.matrix import Row, Table, budget, check_budgets, load_matrix, parse_matrix
from mmimb.quality.runs import Run, all_runs, execute, pending, record_path, work_dir
from mmimb.quality.tables import format_markdown, load_records, summarize, write_table

__all__ = ["Row", "Run", "Table", "all_runs", "budget", "check_budgets", "execute",
           "format_markdown", "load_matrix", "load_records", "parse_matrix", "pending",
           "record_path", "summarize", "work_dir", "write_table"]
