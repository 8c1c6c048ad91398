"""The docs' tables of measured figures, made from benchmarks/results/*.json: `python -m benchmarks.report`.

A page holds a table as a marked block,

    <!-- results: NAME -->
    ...
    <!-- end results -->

and this script rewrites every block of README.md and docs/*.md from its results file (TABLES below
says which), with a caption giving the date and machine the file records. `--check` rewrites
nothing: it exits 1 and names each block that differs from its results file (a test runs it).
The benchmarks print the same tables when they finish.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end results -->)", re.DOTALL)
SEED = "seed recipe (`--recipe seed`)"


def caption(results: dict, benchmark: str) -> str:
    machine = results["machine"]
    described = [f"{machine['cpus']} CPUs" + (f" ({machine['cpu']})" if machine.get("cpu") else "")]
    if machine.get("memory_gib"):
        described.append(f"{machine['memory_gib']:.0f} GiB of memory")
    described.append(", ".join(machine["gpus"]) if machine.get("gpus") else "no GPU")
    text = (f"_Measured on {results['date']} by `python -m benchmarks.{benchmark}` on a machine with "
            f"{' and '.join(described)}, TensorFlow {machine['tensorflow']}._")
    return text + (f" _{results['note']}_" if results.get("note") else "")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def times(seconds: float, base: float) -> str:
    return f"{seconds / base:.2f}x"


def headline(results: dict) -> str:
    sample, digits, fastai = results["results"]["sample"], results["results"]["digits"], results["fastai_sample"]
    rows = [["**default** (`python -m jobs.train`)", f"**{sample['default']['accuracy']:.3f}**",
             f"**{times(sample['default']['seconds'], sample[SEED]['seconds'])}**", f"**{digits['default']['accuracy']:.3f}**"],
            ["the classic recipe (`--recipe seed`)", f"{sample[SEED]['accuracy']:.3f}", "1.00x", f"{digits[SEED]['accuracy']:.3f}"],
            ["fastai `vision_learner` + `fit_one_cycle(6)` (a reference measurement; not run here)",
             f"{fastai['accuracy']:.3f}", f"{fastai['relative_time']:.1f}x", "-"]]
    return markdown(["recipe", "cats vs dogs sample: accuracy", "time vs the classic recipe", "digits (10 classes): accuracy"],
                    rows)


def accuracy(results: dict) -> str:
    datasets = results["results"]
    header = ["recipe", "flags of `python -m jobs.train`"]
    header += [cell for name in datasets for cell in (f"{name}: accuracy", f"{name}: time")]
    rows = []
    for recipe in next(iter(datasets.values())):
        flags = " ".join(next(iter(datasets.values()))[recipe]["flags"])
        row = [recipe, f"`{flags}`" if flags else "(none)"]
        for runs in datasets.values():
            run = runs[recipe]
            relative = run.get("relative_time", run["seconds"] / runs[SEED]["seconds"])
            mark = "*" if "relative_time" in run else ""
            row += [f"{run['accuracy']:.3f}", f"{relative:.2f}x{mark} ({run['seconds']:.0f} s)"]
        rows.append(row)
    fastai = results["fastai_sample"]
    rows.append(["fastai `vision_learner` + `fit_one_cycle(6)` (a reference measurement; not run here)", "-"]
                + [cell for name in datasets for cell in
                   ((f"{fastai['accuracy']:.3f}", f"{fastai['relative_time']:.1f}x") if name == "sample" else ("-", "-"))])
    starred = next((run["measured_in"] for runs in datasets.values() for run in runs.values() if "measured_in" in run), None)
    return markdown(header, rows) + (f"\n\n\\* {starred}." if starred else "")


def tune(results: dict) -> str:
    runs, search = results["single_runs"], results["search"]
    base = runs[SEED]["seconds"]
    rows = [[name, f"{run['accuracy']:.3f}", f"{times(run['seconds'], base)} ({run['seconds']:.0f} s)"] for name, run in runs.items()]
    summary, trials = search["summary"], results["trials"]
    rows.append([f"`jobs.tune --trials {trials}` without its final run (start-up, data check, Ray, features, trials)", "-",
                 f"{times(search['search_seconds'], base)} ({search['search_seconds']:.0f} s)"])
    rows.append([f"`jobs.tune --trials {trials}` in all, with the final run (best of {summary['trials']}, "
                 f"{summary['stopped_early']} stopped early)", f"{search['accuracy']:.3f}",
                 f"{times(search['seconds'], base)} ({search['seconds']:.0f} s)"])
    phases = summary["seconds"]
    return (markdown(["command", "validation accuracy", "wall time vs the seed recipe"], rows)
            + f"\n\nThe search's own {phases['total']:.0f} s: data check {phases['check']:.0f} s, Ray start and features "
            f"{phases['features']:.0f} s, trials {phases['trials']:.0f} s, final run {phases['final_run']:.0f} s. "
            f"Best trial's tuning accuracy {summary['best_tuning_accuracy']:.3f}.")


def cpu(r: dict) -> str:
    ours, idg = r["project_augmented"], r["image_data_generator"]
    cached, long, rss, control, ratios = (r["project_cached"], r["project_cached_60"], r["peak_rss_mib"],
                                          r["peak_rss_control"], r["ratios"])
    rows = [
        ["backbone alone, forward (the ceiling)", f"{r['backbone_images_per_second']:.0f} img/s", ""],
        ["input pipeline alone (host side: decode, resize; no model)", f"{r['pipeline_images_per_second']:,.0f} img/s", ""],
        ["`--recipe seed`, training epoch with augmentation", f"{ours['train_images_per_second_median']:.0f} img/s",
         f"{ratios['training_epoch_vs_backbone_ceiling']:.2f}x the ceiling"],
        ["ImageDataGenerator recipe, epoch", f"{idg['train_images_per_second_median']:.0f} training img/s "
         f"({idg['images_per_second_median']:.0f} counting validation)", ""],
        ["6 epochs with augmentation, this project", f"{ours['wall_seconds']:.0f} s, val acc {ours['val_accuracy']:.3f}",
         f"{ratios['augmented_6_epoch_wall_vs_image_data_generator']:.2f}x the baseline's time"],
        ["6 epochs with augmentation, ImageDataGenerator (the baseline)",
         f"{idg['wall_seconds']:.0f} s, val acc {idg['val_accuracy']:.3f}", ""],
        ["6 epochs without augmentation, cached features", f"{cached['wall_seconds']:.0f} s, val acc {cached['val_accuracy']:.3f}",
         f"{ratios['image_data_generator_wall_vs_cached_6_epoch_wall']:.1f}x faster than the baseline"],
        ["cached: an epoch after the first vs the first (with the feature pass)",
         f"{statistics.median(cached['epoch_seconds'][1:]):.2f} s vs {cached['feature_seconds'] + cached['epoch_seconds'][0]:.1f} s",
         f"{ratios['cached_later_epoch_vs_first_epoch']:.3f}"],
        ["60 head epochs on cached features", f"{long['wall_seconds']:.0f} s, val acc {long['val_accuracy']:.3f}", ""],
        ["peak RSS of a 1-epoch run, 2000 / 8000 images", f"{rss['2000_images']:,.0f} / {rss['8000_images']:,.0f} MiB",
         f"{ratios['peak_rss_8000_vs_2000']:.2f}x for 4x the data"],
        ["peak RSS of a 1-epoch run, 8000 images, cached features spilled to Parquet",
         f"{rss['8000_images_cached_spill']:,.0f} MiB", ""],
        [f"the memory method's control: a process touching {control['allocated_mib']} MiB",
         f"{control['measured_mib']:.0f} MiB (Python alone: {control['python_alone_mib']:.0f} MiB)", ""],
    ]
    return markdown(["measurement", "result", "ratio"], rows)


HOST_PIPELINES = {
    "before": "host-side augmentation: decode to float32, resize, warp on the host",
    "decode": "read + decode",
    "+ resize": "+ resize to 224x224 (folder input, augmentation off)",
    "+ augment": "+ augmentation on (folder input; the warp runs in the training step)",
    "Parquet + augment": "Parquet of the files' bytes (`jobs.ingest`), augmentation on",
    "pre-sized": "pre-sized Parquet (`jobs.ingest --image-size 224`), augmentation off",
    "pre-sized + augment": "pre-sized Parquet, augmentation on",
}


def host_input(results: dict) -> str:
    datasets, gpu_rate = results["datasets"], results["backbone_rate"]
    header = ["host work per training image, per core"] + [
        cell for name in datasets for cell in (f"{name}: img/s per core", f"cores per GPU at {gpu_rate:,.0f} img/s")]
    rows = []
    for pipeline, label in HOST_PIPELINES.items():
        rates = [dataset["rates"][pipeline]["per_cpu_second"] for dataset in datasets.values()]
        rows.append([label] + [cell for rate in rates for cell in (f"{rate:,.0f}", f"{gpu_rate / rate:.1f}")])
    lines = []
    for name, dataset in datasets.items():
        rate = {key: value["per_cpu_second"] for key, value in dataset["rates"].items()}
        size = dataset["bytes_per_image"]
        lines.append(f"- {name}, {dataset['images']} images: pre-sized Parquet costs the host "
                     f"{rate['pre-sized + augment'] / rate['before']:.1f}x less per image than host-side augmentation, "
                     f"folder input {rate['+ augment'] / rate['before']:.1f}x less; augmentation on vs off: "
                     f"{rate['+ augment'] / rate['+ resize']:.2f} (folders), "
                     f"{rate['pre-sized + augment'] / rate['pre-sized']:.2f} (pre-sized Parquet). Bytes per image on "
                     f"disk: source files {size['source_files'] / 1024:.1f} KiB, Parquet {size['parquet'] / 1024:.1f} KiB, "
                     f"pre-sized Parquet {size['presized_parquet'] / 1024:.1f} KiB "
                     f"({size['presized_parquet'] / size['source_files']:.1f}x the source files).")
    return markdown(header, rows) + "\n\n" + "\n".join(lines)


def large_data(results: dict) -> str:
    rows = []
    sizes = results["sizes"]
    for size, row in sizes.items():
        checks = row["checks"]
        rows.append([f"{int(size):,}", f"{row['listing']['seconds']:.2f}", f"{row['listing']['bytes_per_file']:.0f}",
                     f"{checks['first_files_per_second']:.0f}",
                     f"{checks['second_seconds']:.2f} ({100 * checks['second_over_first']:.1f} %)",
                     f"{checks['stat_seconds']:.2f} ({100 * checks['stat_over_first']:.1f} %)",
                     f"{row['local_ingest']['images_per_second']:.0f}",
                     f"{row['ray_ingest']['images_per_second']:.0f}" if "ray_ingest" in row else "-",
                     f"{row['first_step_seconds']:.1f}",
                     f"{row['first_step_recheck_seconds']:.1f}" if "first_step_recheck_seconds" in row else "-"])
    table = markdown(["files", "listing s", "listing bytes/file", "first check files/s", "second check s (of first)",
                      "stat alone s (of first)", "local ingest img/s", "Ray ingest img/s", "first step s",
                      "first step s, --recheck"], rows)
    smallest, first = next(iter(sizes)), sizes[next(iter(sizes))]["first_step_seconds"]
    lines = ["- time to the first step on checked Parquet, against " + f"{int(smallest):,} files: " + ", ".join(
        f"{row['first_step_seconds'] / first:.2f}x at {int(size):,}" for size, row in sizes.items() if size != smallest)]
    ray = [f"{row['ray_ingest']['images_per_second'] / row['local_ingest']['images_per_second']:.2f}x at {int(size):,}"
           for size, row in sizes.items() if "ray_ingest" in row]
    if ray:
        lines.append("- Ray ingest's rate against the local ingest's, on this one machine: " + ", ".join(ray))
    if "photos" in results:
        checks = results["photos"]["checks"]
        lines.append(f"- photos (500x375 JPEG), {results['photos']['files']:,} files: first check "
                     f"{checks['first_files_per_second']:.0f} files/s ({checks['first_seconds']:.1f} s), second check "
                     f"{checks['second_seconds']:.2f} s ({100 * checks['second_over_first']:.1f} % of the first), stat alone "
                     f"{checks['stat_seconds']:.2f} s ({100 * checks['stat_over_first']:.1f} %)")
    return table + "\n\n" + "\n".join(lines)


def object_storage(results: dict) -> str:
    parquet, check, job = (results["results"][name] for name in ("parquet", "check", "job"))
    rows = [[f"Parquet shards at 224x224 ({parquet['images']:,} photos), streamed through the training pipeline",
             f"{parquet['images_per_second']['disk']:.0f} images/s", f"{parquet['images_per_second']['s3']:.0f} images/s",
             f"{parquet['s3_over_disk']:.2f}x the rate"],
            [f"first check of {check['files']:,} class-folder files (listing, every file decoded)",
             f"{check['disk']['first_seconds']:.1f} s", f"{check['s3']['first_seconds']:.1f} s",
             f"{check['first_s3_over_disk']:.2f}x the time"],
            ["second check of the same files (nothing changed: remembered verdicts)",
             f"{check['disk']['second_seconds']:.2f} s", f"{check['s3']['second_seconds']:.2f} s",
             f"{check['second_s3_over_disk']:.2f}x the time"],
            ["the default job (`python -m jobs.train`, whole process), `--output-dir` on disk / in the bucket",
             f"{job['seconds']['disk']:.1f} s", f"{job['seconds']['s3']:.1f} s", f"{job['s3_over_disk']:.2f}x the time"]]
    table = markdown(["what", "local disk", "S3 (moto_server on 127.0.0.1)", "S3 against disk"], rows)
    server = results["results"].get("server")
    rate = (f" The server itself answered {server['reads_per_second_serial']:.0f} small reads/s one at a time and "
            f"{server['reads_per_second_16_threads']:.0f}/s from 16 threads." if server else "")
    return table + (f"\n\nMedians of {results['repeats']} passes or runs each, alternated; {results['server']}.{rate}")


def tracking(results: dict) -> str:
    figures = results["results"]
    rows = [["the default job (`python -m jobs.train`, whole process)", f"{figures['seconds']['off']:.1f} s",
             f"{figures['seconds']['mlflow']:.1f} s", f"{figures['mlflow_over_off']:.2f}x the time"]]
    table = markdown(["what", "without MLflow", "with `--tracking-uri` (mlflow server on 127.0.0.1)", "with against without"],
                     rows)
    return table + f"\n\nMedians of {results['repeats']} runs each, alternated."


def audit(results: dict) -> str:
    figures, parts = results["results"], []
    if "quality" in figures:
        quality = figures["quality"]
        names = list(quality)

        def share(value) -> str:
            return "-" if value is None else f"{value:.0%}"

        def cells(get) -> list[str]:
            return [get(quality[name]) for name in names]

        rows = [["exact copies of validation images in train/: found", *cells(lambda q: share(q["exact_recall"])), "100 %"],
                ["enlarged (x2-x8), re-encoded copies: found", *cells(lambda q: share(q["near"]["recall"]["enlarged"])),
                 "90 %"],
                ["shrunk (x0.85), re-encoded copies: found", *cells(lambda q: share(q["near"]["recall"]["shrunk"])), "90 %"],
                ["near-duplicate findings the planting added: right", *cells(
                    lambda q: f"{share(q['near']['precision'])} of {q['near']['added_findings']}"), "90 %"],
                ["moved images among the label issues", *cells(lambda q: f"{share(q['label_issues']['recall'])} "
                                                                  f"({q['label_issues']['moved_found']} of {q['planted']['moved']})"),
                 "70 %"],
                ["label issues that are moved images", *cells(lambda q: f"{share(q['label_issues']['precision'])} of "
                                                                  f"{q['label_issues']['reported']}"), "50 %"]]
        parts.append(markdown(["planted problem", *(f"{name} ({sum(quality[name]['images'].values())} images)"
                                                    for name in names), "target"], rows))
        sweep = [[f"{threshold}", *cells(lambda q, t=threshold: f"{share(q['near_sweep'][t]['recall']['enlarged'])} / "
                                                                 f"{share(q['near_sweep'][t]['recall']['shrunk'])} / "
                                                                 f"{share(q['near_sweep'][t]['precision'])}")]
                 for threshold in quality[names[0]]["near_sweep"]]
        parts.append("Near-duplicate threshold (cosine similarity of the backbone's features) against the planted copies: "
                     "enlarged found / shrunk found / right among the findings the planting added.\n\n"
                     + markdown(["threshold", *names], sweep))
    if "search" in figures:
        rows = [[f"{entry['images']:,}", f"{entry['seconds']:.1f} s", f"{entry['features_mib']:.0f} MiB",
                 f"{entry['peak_mib_before_search']:.0f} MiB", f"{entry['peak_mib']:.0f} MiB",
                 f"{entry['planted_pairs_found']:.0%}"] for entry in figures["search"]]
        parts.append("The near-duplicate search alone (synthetic 1280-d features, each size in a fresh process):\n\n" + markdown(
            ["images", "search", "the features themselves", "peak memory before the search (features made)",
             "peak memory after it", "planted near pairs found"], rows))
    if "run" in figures:
        run = figures["run"]
        parts.append(markdown(["the default job (`python -m jobs.train`, whole process)", "with `--no-audit`",
                               "with its audit (the default)", "with against without", "the audit's own time"],
                              [["built-in sample", f"{run['seconds']['no_audit']:.1f} s", f"{run['seconds']['audit']:.1f} s",
                                f"{run['audit_over_no_audit']:.2f}x", f"{run['audit_seconds']:.1f} s "
                                                                       f"({run['audit_share_of_run']:.0%} of the run)"]])
                     + f"\n\nMedians of {results['repeats']} runs each, alternated (ABBA).")
    return "\n\n".join(parts)


def imbalance(results: dict) -> str:
    methods = ("none", "weights", "logit_adjust")
    rows = []
    for dataset, profiles in results["results"].items():
        for profile, entry in profiles.items():
            counts = entry["train_images_per_class"]
            scores = entry["methods"]
            cells = [f"{scores[m]['balanced_accuracy']:.3f} / {scores[m]['accuracy']:.3f}" for m in methods]
            gains = [f"{100 * (scores[m]['balanced_accuracy'] - scores['none']['balanced_accuracy']):+.1f} / "
                     f"{100 * (scores[m]['accuracy'] - scores['none']['accuracy']):+.1f}" for m in methods[1:]]
            rows.append([f"{dataset}, {profile} ({max(counts)}:{min(counts)} training images)", *cells, *gains])
    table = markdown(["training data", *(f"`{m}`: balanced acc. / acc." for m in methods),
                      *(f"`{m}` against `none` (points)" for m in methods[1:])], rows)
    return table + (f"\n\nMeans over seeds {', '.join(map(str, results['seeds']))}; validation balanced as shipped; the "
                    "same backbone features for every method.")


def floor(results: dict) -> str:
    figures = results["results"]
    floor_, job = figures["floor"], figures["job"]
    rows = [["whole process (wall time)", f"{floor_['seconds']:.1f} s", f"{job['seconds']:.1f} s",
             f"{figures['job_over_floor']:.2f}x", "1.25x"],
            ["backbone pass over the 2,000 images", f"{floor_['images_per_second']:.0f} images/s",
             f"{job['images_per_second']:.0f} images/s", f"{figures['feature_rate_job_over_floor']:.2f}x", "0.95x"],
            ["peak memory", f"{floor_['peak_mib']:.0f} MiB", f"{job['peak_mib']:.0f} MiB",
             f"{figures['peak_job_over_floor']:.2f}x", "1.15x"]]
    before = figures.get("before")
    if before:  # --before: the job of an earlier commit, alternated with these
        rows.insert(1, [f"the job before (commit {before['commit']})", f"{floor_['seconds']:.1f} s",
                        f"{before['seconds']:.1f} s", f"{figures['before_over_floor']:.2f}x", ""])
    table = markdown(["", "floor (import, load, one backbone pass)", "the default job", "job / floor", "target"], rows)
    floor_phases = {"start, imports and check": f"{floor_['imports']:.1f} (imports)",
                    "backbone load": f"{floor_['load']:.1f}", "feature pass": f"{floor_['pass']:.1f}",
                    "exit": f"{floor_['start_and_exit']:.1f} (interpreter start and exit)"}
    columns = ["phase of the job", *(["before (s)"] if before else []), "seconds", "the floor's"]
    breakdown = markdown(columns, [[name, *([f"{before['phases'].get(name, 0.0):.1f}"] if before else []), f"{seconds:.1f}",
                                    floor_phases.get(name, "")] for name, seconds in job["phases"].items()])
    return (table + f"\n\nMedians of {results['repeats']} runs each, alternated. The job's time by phase (from when its "
            "log lines appeared; the floor's own phases beside):\n\n" + breakdown)


# table name -> (benchmark and results file, what makes the table)
TABLES = {
    "headline": ("accuracy", headline),
    "accuracy": ("accuracy", accuracy),
    "tune": ("tune", tune),
    "cpu": ("cpu", cpu),
    "host_input": ("host_input", host_input),
    "large_data": ("large_data", large_data),
    "object_storage": ("object_storage", object_storage),
    "tracking": ("tracking", tracking),
    "audit": ("audit", audit),
    "imbalance": ("imbalance", imbalance),
    "floor": ("floor", floor),
}


def save(path: Path, name: str, results: dict) -> None:
    """A benchmark's results file written, and its docs table (`name`) printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(render(name, results))


def render(name: str, results: dict) -> str:
    """A block's text: the caption, then the table and what is derived from it."""
    benchmark, make = TABLES[name]
    return f"{caption(results, benchmark)}\n\n{make(results)}\n"


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def update(root: Path = REPO, *, write: bool) -> list[str]:
    """Every block that differs from its results file, as "page: block (from file)"; write: rewrite them."""
    stale = []
    for page in pages(root):
        text = page.read_text()

        def expected(match: re.Match) -> str:
            name, where = match["name"], page.relative_to(root)
            if name not in TABLES:
                raise SystemExit(f"error: {where}: no table named {name!r} (known: {', '.join(TABLES)})")
            results_file = root / "benchmarks" / "results" / f"{TABLES[name][0]}.json"
            if not results_file.exists():
                raise SystemExit(f"error: {where}: table {name!r} needs {results_file}, which is missing")
            body = render(name, json.loads(results_file.read_text()))
            if body != match["body"]:
                stale.append(f"{where}: {name} (from {results_file.relative_to(root)})")
            return match[1] + body + match[4]

        new = BLOCK.sub(expected, text)
        if write and new != text:
            page.write_text(new)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its results")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = update(args.root, write=not args.check)
    for block in stale:
        print(f"{'out of date' if args.check else 'rewritten'}: {block}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("run `python -m benchmarks.report` to rewrite them from the results files", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
