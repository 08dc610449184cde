"""Plots of LongTailMetric reports: per-class AP vs training frequency, and AP differences.

Same as ``mmimb-analyze results``; the logic lives in :mod:`mmimb.analysis`.

Examples::

    python tools/analysis/plot_results.py work_dirs/demo/method/*/long_tail.json \\
        --baseline work_dirs/demo/baseline/*/long_tail.json --labels baseline method
"""

import argparse

from mmimb.analysis.cli import add_results_arguments, run_results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_results_arguments(parser).parse_args()


def main() -> None:
    run_results(parse_args())


if __name__ == "__main__":
    main()
