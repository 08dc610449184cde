"""Class statistics of a training set: table, long-tail curve, re-sampling effect, advice.

Same as ``mmimb-analyze dataset``; the logic lives in :mod:`mmimb.analysis`.

Examples::

    python tools/analysis/dataset_stats.py ../shared/data/bccd/BCCD --split train
    python tools/analysis/dataset_stats.py ../shared/data/lvis_v1_train_cat_info.json \\
        --num-images 100170
    python tools/analysis/dataset_stats.py configs/retinanet/retinanet_r18tiny_fpn_2k_ltsynth.py \\
        --resample type=RepeatFactorSampler oversample_thr=auto
"""

import argparse

from mmimb.analysis.cli import add_dataset_arguments, run_dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_dataset_arguments(parser).parse_args()


def main() -> None:
    run_dataset(parse_args())


if __name__ == "__main__":
    main()
