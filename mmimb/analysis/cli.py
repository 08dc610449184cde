"""``mmimb-analyze``: class-imbalance report of a training set, and plots of long-tail results.

Two sub-commands::

    mmimb-analyze dataset SOURCE [--split train] [--count-by image|instance]
        [--group-by auto|threshold|quantile|frequency] [--resample type=... key=value ...]
        [--out-dir DIR]
    mmimb-analyze results METRIC_JSON [--baseline BASELINE_JSON] [--out-dir DIR]

``dataset`` prints the classes sorted by frequency (instances, images, group, share, effective
number), the imbalance ratio and Gini coefficient, and recommends a repeat-factor threshold and
a class-balanced beta with the reason; with a re-sampling config (found in a config's train
dataloader, or given with ``--resample``) it adds the expected per-class counts per epoch. It
writes ``{prefix}class_stats.{md,csv,json}``, ``{prefix}long_tail.png`` and
``{prefix}resampling_{i}.{csv,png}``. ``results`` reads reports of
:class:`~mmimb.evaluation.LongTailMetric` and writes ``{prefix}ap_vs_frequency.png`` and, with a
baseline, ``{prefix}ap_difference.png``.

A dict argument of ``--resample`` is given entry by entry, as nested keys of mmengine's
``--cfg-options``: ``sampling_strategy.RBC=100 sampling_strategy.WBC=50`` (a key of digits that
names no class is a class index). Outputs are written all or nothing: everything is computed and
drawn in a temporary folder inside ``--out-dir`` first, and moved into place only if every step
succeeded, so an invalid ``--resample`` leaves an earlier report intact.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmengine.config import DictAction

from mmimb.analysis.resampling import ResamplingEffect, format_effect, resampling_effect
from mmimb.analysis.sources import DatasetSource, load_source
from mmimb.analysis.summary import DEFAULT_MAX_REPEAT, format_summary, summarize_dataset
from mmimb.evaluation.groups import GROUPINGS
from mmimb.evaluation.long_tail import compare_table, format_table, load_result
from mmimb.stats import LVIS_COMMON_MAX, LVIS_RARE_MAX


def add_dataset_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``mmimb-analyze dataset`` (also used by ``tools/analysis``)."""
    parser.add_argument("source", help="a config (.py), a COCO / LVIS / LVIS category-info json, "
                                       "or a Pascal VOC folder")
    parser.add_argument("--split", help="VOC split, a file of ImageSets/Main (default trainval)")
    parser.add_argument("--num-images", type=int,
                        help="training images, for LVIS category-info files (LVIS v1: 100170)")
    parser.add_argument("--count-by", choices=("image", "instance"), default="image",
                        help="count that sorts and groups the classes (default: image, as LVIS)")
    parser.add_argument("--group-by", choices=GROUPINGS, default="auto",
                        help="frequency groups: LVIS letters if present, else thresholds")
    parser.add_argument("--rare-max", type=float, default=LVIS_RARE_MAX)
    parser.add_argument("--common-max", type=float, default=LVIS_COMMON_MAX)
    parser.add_argument("--quantiles", type=float, nargs=2, default=(1 / 3, 2 / 3))
    parser.add_argument("--max-repeat", type=float, default=DEFAULT_MAX_REPEAT,
                        help="repeat factor of the rarest class for the recommended threshold")
    parser.add_argument("--beta-ratio", type=float,
                        help="E(n_max) / E(n_min) of the recommended beta (default: sqrt of the "
                             "imbalance ratio)")
    parser.add_argument("--resample", nargs="+", action=DictAction,
                        help="a sampler or wrapper config, e.g. type=RepeatFactorSampler "
                             "oversample_thr=auto (auto: the recommended threshold); a dict "
                             "entry by entry: type=UndersampleSampler "
                             "sampling_strategy.RBC=100 sampling_strategy.WBC=50")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="overrides of the config, key=value pairs")
    parser.add_argument("--name", help="name of the dataset in the report (default: the path)")
    parser.add_argument("--out-dir", default="work_dirs/analysis", help="output folder")
    parser.add_argument("--prefix", default="", help="prefix of the output file names")
    parser.add_argument("--max-rows", type=int, default=40,
                        help="classes printed (head and tail; the CSV has all); 0: all")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def add_results_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``mmimb-analyze results``."""
    parser.add_argument("result", help="long_tail.json written by LongTailMetric")
    parser.add_argument("--baseline", help="a second long_tail.json to compare with")
    parser.add_argument("--labels", nargs=2, default=("baseline", "method"),
                        metavar=("BASELINE", "METHOD"), help="names of the two runs")
    parser.add_argument("--out-dir", default="work_dirs/analysis", help="output folder")
    parser.add_argument("--prefix", default="", help="prefix of the output file names")
    return parser


def resample_spec(pairs: dict[str, Any], classes: Sequence[str] = ()) -> dict[str, Any]:
    """The config dict of ``--resample`` pairs; ``key.sub=value`` sets ``spec[key][sub]``.

    Args:
        pairs: ``key=value`` pairs as parsed by mmengine's ``DictAction``.
        classes: the dataset's class names; a sub-key of digits that is not one of them is a
            class index (the keys of a ``sampling_strategy`` dict are names or indices).

    Raises:
        ValueError: naming the key, if a value is written as a ``{...}`` literal (which
            ``DictAction`` cannot parse), or a key is given both whole and entry by entry.
    """
    spec: dict[str, Any] = {}
    for key, value in pairs.items():
        first = value[0] if isinstance(value, list | tuple) and value else value
        if isinstance(first, str) and first.lstrip().startswith("{"):
            raise ValueError(f"--resample {key}={value!r}: a dict is given entry by entry, e.g. "
                             f"{key}.CLASS=N for each class (CLASS a name or an index)")
        head, _, sub = key.partition(".")
        if not sub:
            if isinstance(spec.get(head), dict):
                raise ValueError(f"--resample gives {head!r} both whole and entry by entry")
            spec[head] = value
            continue
        if head in spec and not isinstance(spec[head], dict):
            raise ValueError(f"--resample gives {head!r} both whole ({spec[head]!r}) and entry "
                             f"by entry ({key}={value!r})")
        index = sub.isdigit() and sub not in classes
        spec.setdefault(head, {})[int(sub) if index else sub] = value
    return spec


def _effects(source: DatasetSource, extra: dict[str, Any] | None,
             recommended_thr: float) -> list[ResamplingEffect]:
    specs = list(source.resampling)
    if extra:
        spec = resample_spec(extra, source.stats.classes)
        if spec.get("oversample_thr") == "auto":
            spec["oversample_thr"] = recommended_thr
        specs.append(spec)
    if not specs:
        return []
    if source.image_labels is None:
        raise ValueError(f"{source.name} has per-class counts only: the effect of re-sampling "
                         "needs per-image labels (a COCO / LVIS json, a VOC folder or a config)")
    return [resampling_effect(spec, source.image_labels, source.stats) for spec in specs]


@contextlib.contextmanager
def staged_outputs(out_dir: Path) -> Iterator[Path]:
    """A temporary folder inside ``out_dir`` whose files move into ``out_dir`` on success.

    Outputs are all or nothing: if the block raises, the temporary folder is deleted, files
    already in ``out_dir`` stay as they were, and ``out_dir`` itself is removed again when this
    call created it and it is still empty.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".mmimb-analyze-") as tmp:
            yield Path(tmp)
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():  # renames within one file system: nothing is copied
                    target = out_dir / path.relative_to(tmp)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _write_effect(effect: ResamplingEffect, source: DatasetSource, path: Path) -> None:
    names = source.stats.classes or tuple(str(i) for i in range(source.stats.num_classes))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "instances", "expected_instances", "images",
                         "expected_images"])
        for c, name in enumerate(names):
            writer.writerow([name, int(source.stats.instance_counts[c]),
                             f"{effect.instances[c]:.3f}", int(source.stats.image_counts[c]),
                             f"{effect.images[c]:.3f}"])


def run_dataset(args: argparse.Namespace) -> str:
    """Analyse a training set; print and write the report. Returns the printed text.

    Everything is computed before anything is written, and written all or nothing
    (:func:`staged_outputs`).
    """
    from mmimb.analysis.plots import plot_long_tail, plot_resampling
    from mmimb.analysis.summary import write_summary

    source = load_source(args.source, args.split, args.num_images, args.cfg_options,
                         progress=not args.no_progress)
    notes = [*source.notes] + ([source.issues.summary()] if source.issues else [])
    summary = summarize_dataset(
        source.stats, args.name or source.name, args.count_by, args.group_by, args.rare_max,
        args.common_max, args.quantiles, source.frequency, args.max_repeat, args.beta_ratio,
        source.image_labels, notes)
    max_rows = args.max_rows or None
    effects = _effects(source, args.resample, summary.repeat.value)
    text = "\n\n".join([format_summary(summary, max_rows),
                        *(format_effect(effect, source.stats, max_rows) for effect in effects)])
    out, prefix = Path(args.out_dir), args.prefix
    with staged_outputs(out) as tmp:
        written = [*write_summary(summary, tmp, f"{prefix}class_stats"),
                   plot_long_tail(summary, tmp / f"{prefix}long_tail.png")]
        for i, effect in enumerate(effects):
            _write_effect(effect, source, tmp / f"{prefix}resampling_{i}.csv")
            written += [tmp / f"{prefix}resampling_{i}.csv",
                        plot_resampling(source.stats, effect, tmp / f"{prefix}resampling_{i}.png")]
        (tmp / f"{prefix}class_stats.md").write_text(text + "\n")
        written.append(tmp / f"{prefix}class_stats.md")
        written = [out / path.relative_to(tmp) for path in written]
    print(text)
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return text


def run_results(args: argparse.Namespace) -> str:
    """Plot a metric report (and its difference to a baseline). Returns the printed text.

    Both reports are read and checked before anything is written; outputs are all or nothing.
    """
    from mmimb.analysis.plots import plot_ap_difference, plot_ap_vs_frequency

    result = load_result(args.result)
    baseline = load_result(args.baseline) if args.baseline else None
    text = format_table(result)
    if baseline is not None:
        text += "\n\n" + compare_table({args.labels[0]: baseline, args.labels[1]: result})
    out, prefix = Path(args.out_dir), args.prefix
    with staged_outputs(out) as tmp:
        written = [plot_ap_vs_frequency(result, tmp / f"{prefix}ap_vs_frequency.png")]
        if baseline is not None:
            written.append(plot_ap_difference(baseline, result,
                                              tmp / f"{prefix}ap_difference.png",
                                              tuple(args.labels)))
        written = [out / path.relative_to(tmp) for path in written]
    print(text)
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mmimb-analyze`` with its two sub-commands."""
    parser = argparse.ArgumentParser(prog="mmimb-analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_dataset_arguments(sub.add_parser("dataset", help="class statistics of a training set"))
    add_results_arguments(sub.add_parser("results", help="plots of LongTailMetric reports"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mmimb-analyze``; returns the exit status (1 on invalid input)."""
    args = build_parser().parse_args(argv)
    try:
        run_dataset(args) if args.command == "dataset" else run_results(args)
    # The documented errors of bad input (TypeError: a setting of the wrong type, OSError: a
    # file that cannot be read or written); anything else is a bug and keeps its traceback.
    except (ValueError, TypeError, OSError) as err:
        print(f"mmimb-analyze: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
