"""The command-line entry points: arguments reach the config, errors reach the user readably."""
import json
import subprocess
import sys
import textwrap

import pytest

from jobs.train import config_from_args, parse_args
from tl_core.config import TrainConfig


def test_defaults_are_the_measured_recipe():
    config = config_from_args(parse_args([]))
    assert config == TrainConfig()
    assert (config.backbone, config.image_size, config.batch_size, config.epochs, config.augment, config.head_hidden,
            config.head_schedule, config.learning_rate) == ("mobilenet_v2", 224, 100, 60, False, 256, "one_cycle", 3e-3)
    assert config.uses_feature_cache and not config.uses_feature_bank


def test_flags_override_a_saved_config(tmp_path):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({**TrainConfig().to_dict(), "epochs": 9, "seed": 4}))
    config = config_from_args(parse_args(["--config", str(saved), "--seed", "5", "--augment"]))
    assert (config.epochs, config.seed, config.augment) == (9, 5, True)


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"batch_size": -3}, "batch_size must be a positive integer"),
    ({"learning_rate": 0.0}, "learning_rate must be positive"),
    ({"epoch": 3}, "unknown configuration keys"),
    # Values as exporters write them: refused, never guessed ("false" is true in Python).
    ({"learning_rate": "0.001"}, r"'learning_rate' is \"0.001\", which is not a number: write it without quotes"),
    ({"augment": "false"}, r"'augment' is \"false\", which is not true or false: write it without quotes"),
    ({"head_dropout": None}, "'head_dropout' is null, which is not a number"),
    ({"epochs": 3.5}, "'epochs' is 3.5, which is not a whole number"),
    ({"head_cycle_ends": [3, "4"]}, "which is not a list of whole numbers or null"),
])
def test_bad_configuration_is_refused(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **values})


def run_job(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jobs.train", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_reports_a_missing_data_dir_without_a_traceback(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = run_job("--data-dir", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "run"), cwd=repo)
    assert result.returncode == 2
    assert f"error: {tmp_path / 'nope'} is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_config_value_of_the_wrong_type_in_one_line_writing_nothing(tmp_path):
    from pathlib import Path

    (tmp_path / "config.json").write_text('{"learning_rate": "0.001", "epochs": 2}')
    result = run_job("--config", str(tmp_path / "config.json"), "--output-dir", str(tmp_path / "run"),
                     cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'config.json'}: configuration key 'learning_rate' "
                                                      'is "0.001", which is not a number: write it without quotes, '
                                                      '"learning_rate": 0.001')
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json"]


def test_cli_reports_an_unreachable_backbone(tmp_path, colour_dataset, tiny_backbone):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = run_job("--data-dir", str(colour_dataset), "--backbone", str(tmp_path / "no_such_model"),
                     "--batch-size", "8", "--output-dir", str(tmp_path / "run"), cwd=repo)
    assert result.returncode == 2
    assert "could not load backbone" in result.stderr and "local SavedModel" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # checked before anything is written


@pytest.mark.parametrize("flags", [["--use-gpu"], ["--cpus-per-worker", "2"], ["--gpus-per-worker", "2"],
                                   ["--max-failures", "0"], ["--num-workers", "1"], ["--ray"]])
def test_ray_flags_run_on_ray_instead_of_being_ignored(flags):
    config = config_from_args(parse_args(flags))
    assert config.ray and config.uses_ray
    assert not config_from_args(parse_args([])).uses_ray


def test_performance_flags_reach_the_config():
    assert config_from_args(parse_args(["--no-augment"])).uses_feature_cache
    assert not config_from_args(parse_args(["--no-augment", "--no-cache-features"])).uses_feature_cache
    assert config_from_args(parse_args([])).uses_feature_cache  # the default: unaugmented features, computed once
    assert not config_from_args(parse_args(["--augment"])).uses_feature_cache
    assert config_from_args(parse_args(["--augment", "--feature-views", "4"])).uses_feature_bank
    assert config_from_args(parse_args(["--jit-compile"])).jit_compile is True
    assert config_from_args(parse_args(["--no-jit-compile"])).jit_compile is False
    assert config_from_args(parse_args([])).jit_compile is False


def test_every_configuration_field_is_a_documented_flag():
    import argparse
    import dataclasses

    from jobs.train import add_training_arguments

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    flags = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("command_line") is False:  # set by the job (head_cycle_ends), documented in config.json
            assert field.name not in flags
            continue
        assert field.name in flags and field.metadata["help"] in flags[field.name].help, field.name
    config = config_from_args(parse_args(["--validation-split", "0.3", "--skip-bad-files", "--max-image-megapixels",
                                          "50", "--no-augment", "--no-cache-features", "--bf16", "--seed", "7"]))
    assert (config.validation_split, config.bad_files, config.max_image_megapixels, config.augment,
            config.cache_features, config.bf16, config.seed) == (0.3, "skip", 50.0, False, False, True, 7)


def test_every_settings_dataclass_gets_its_flags_from_one_generator_and_checks_its_own_values(capsys):
    """PromotionRule (jobs.retrain) and AuditSettings (jobs.audit) as TrainConfig: a flag per field from its help text,
    read back into the dataclass, which refuses a bad value (argparse's one line, status 2)."""
    from jobs.audit import parse_args as audit_args
    from jobs.retrain import parse_args as retrain_args
    from tl_core.audit import AuditSettings
    from tl_core.registry.promotion import PromotionRule

    rule = retrain_args(["--registry", "r", "--promote-metric", "macro_f1", "--significance", "1", "--min-class-images",
                         "5"]).rule
    assert rule == PromotionRule(metric="macro_f1", significance=1.0, min_class_images=5)
    assert retrain_args(["--registry", "r"]).rule == PromotionRule()
    assert audit_args(["--class-floor", "0.3"]).settings == AuditSettings(class_floor=0.3)
    for parse, argv, message in ((retrain_args, ["--registry", "r", "--significance", "0"], "--significance must be in"),
                                 (retrain_args, ["--registry", "r", "--promote-metric", "f2"], "invalid choice: 'f2'"),
                                 (audit_args, ["--near-threshold", "1.5"], "--near-threshold must be in (0, 1]")):
        with pytest.raises(SystemExit) as stopped:
            parse(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    help_text = " ".join(subprocess.run([sys.executable, "-m", "jobs.retrain", "--help"], capture_output=True, text=True,
                                        timeout=120).stdout.split())
    assert "--promote-metric {accuracy,balanced_accuracy,macro_f1}" in help_text
    assert "by at least this much (default 0.01)" in help_text


def test_a_ray_run_stopped_before_its_first_epoch_offers_no_resume(tiny_backbone, colour_dataset, tmp_path, monkeypatch,
                                                                  capsys):
    """Ray Train creates <run>/ray/ when it starts; only a checkpoint in it is something --resume continues from."""
    from jobs.train import main as train_job
    from tl_core.training import ray_train

    def starts_then_stops(config, sources, trackers):
        (tmp_path / "run" / "ray" / "ray-train-run").mkdir(parents=True, exist_ok=True)  # Ray writes it before any epoch
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_train, "train_on_ray", starts_then_stops)
    args = ["--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size", "32", "--batch-size", "8",
            "--ray", "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    assert train_job(args) == 130
    err = capsys.readouterr().err
    assert "No epoch was completed." in err and "--resume" not in err
    (tmp_path / "run" / "ray" / "checkpoint_000000").mkdir()  # after an epoch
    assert train_job([*args[:-4], "--resume", "--output-dir", str(tmp_path / "run"), "--cache-dir",
                      str(tmp_path / "cache")]) == 130
    assert "python -m jobs.train --resume --output-dir" in capsys.readouterr().err


def test_ingest_declares_the_settings_it_shares_with_training_once():
    from jobs.ingest import INGEST_FIELDS, parse_args as ingest_args

    parser_help = subprocess.run([sys.executable, "-m", "jobs.ingest", "--help"], capture_output=True, text=True,
                                 timeout=120).stdout
    for name in INGEST_FIELDS:
        field = TrainConfig.__dataclass_fields__[name]
        assert " ".join(field.metadata["help"].split()[:6]) in " ".join(parser_help.split()), name  # the config's text
    args = ingest_args(["--check", "--seed", "4", "--skip-bad-files", "--min-image-side", "16"])
    assert (args.seed, args.bad_files, args.min_image_side, args.max_image_megapixels) == (4, "skip", 16, None)


def test_an_exit_signal_landing_in_a_callback_is_dropped_quietly_in_a_ray_worker():
    """Ray stops a worker with SIGTERM, which its handler turns into SystemExit; landing in a weakref callback it
    cannot be raised, and Python would print it with a stack trace (seen after an interrupted search)."""
    script = textwrap.dedent("""
        import gc, weakref
        from tl_core.interrupts import drop_exit_signals_in_callbacks

        class Thing:
            pass

        def callback_raising(error):
            def callback(ref):
                raise error
            return callback

        drop_exit_signals_in_callbacks()
        drop_exit_signals_in_callbacks()  # idempotent
        for error in (SystemExit(1), KeyboardInterrupt(), ValueError("a real problem")):
            thing = Thing()
            ref = weakref.ref(thing, callback_raising(error))
            del thing
            gc.collect()
        print("still running")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "still running" in done.stdout
    assert "SystemExit" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert "ValueError: a real problem" in done.stderr  # other unraisable exceptions are still reported


def test_every_line_tensorflow_prints_at_start_up_is_explained_in_the_manual():
    """The troubleshooting section quotes TensorFlow's start-up lines (which no supported setting removes) and says
    why they are harmless; a TensorFlow upgrade that prints something new fails here until it is explained."""
    import re

    from conftest import manual_text

    block = manual_text().split("<!-- tensorflow start-up lines -->")[1].split("<!-- end -->")[0]
    quoted = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("```")]
    absl_prefix = re.compile(r"^[IWEF]\d{4} \S+ +\d+ ")  # I0000 00:00:1796355529.852841   25224

    def message(line: str) -> str:
        return absl_prefix.sub("", line.replace("I0000 00:00:... ", "").replace("E0000 00:00:... ", "")
                               .replace("W0000 00:00:... ", ""))

    explained = [message(line) for line in quoted]
    done = subprocess.run([sys.executable, "-c", "import tl_core, tensorflow as tf; print(float(tf.constant(1.0) + 1))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "2.0", done.stderr
    unexplained = [line for line in done.stderr.splitlines() if line.strip() and message(line) not in explained]
    assert not unexplained, unexplained


def test_a_sigterm_landing_in_a_callback_still_stops_the_command():
    """The command's SIGTERM handler raises KeyboardInterrupt; raised inside a weakref callback (TensorFlow runs many)
    Python cannot propagate it and would print it and carry on: the interrupt is delivered again instead."""
    script = textwrap.dedent("""
        import gc, os, signal, sys, time, weakref
        from jobs.cli import run_command

        class Thing:
            pass

        def callback(ref):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next step: inside this callback
            for _ in range(1000):
                pass

        def body():
            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing
            gc.collect()
            for _ in range(300):
                time.sleep(0.01)
            print("not interrupted")

        sys.exit(run_command(body))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and "not interrupted" not in done.stdout, done.stderr
    assert done.stderr.strip() == "Interrupted.", done.stderr


def test_a_second_sigterm_ends_a_run_stuck_where_no_safe_point_comes_at_once(tiny_backbone, colour_dataset, tmp_path):
    """The first SIGTERM is recorded for the next safe point; an export that never reaches one (stuck here on purpose)
    would need SIGKILL: the second ends the command at once, with the interrupt status, the completed epochs intact."""
    import json
    import signal
    import time
    from pathlib import Path

    script = textwrap.dedent(f"""
        import sys, time
        import tl_core.training.train as train_module
        from jobs.cli import exit_after
        from jobs.train import main

        def stuck_export(*args, **kwargs):
            print("exporting", flush=True)
            time.sleep(300)

        train_module.export_classifier = stuck_export
        exit_after(lambda: main(["--data-dir", {str(colour_dataset)!r}, "--backbone", {tiny_backbone!r}, "--image-size",
                                 "32", "--batch-size", "8", "--epochs", "2", "--output-dir", {str(tmp_path / "run")!r},
                                 "--cache-dir", {str(tmp_path / "cache")!r}, "--quiet"]))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while process.stdout.readline().strip() != "exporting":
            assert process.poll() is None, process.stderr.read()[-3000:]
        process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert process.poll() is None  # recorded: the stuck export goes on
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = process.communicate(timeout=30)
        ended_after = time.monotonic() - started
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == 130 and ended_after < 10, (process.returncode, ended_after, err[-3000:])
    assert err.strip().splitlines()[-1].startswith("Interrupted again: stopping at once")
    pointer = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert pointer["epoch"] == 2 and (tmp_path / "run" / "checkpoints" / pointer["directory"]).is_dir()


def test_an_output_dir_among_the_data_or_a_folder_that_is_not_a_run_is_never_written_into(colour_dataset, tiny_backbone,
                                                                                          tmp_path, capsys):
    import shutil
    from pathlib import Path

    from jobs import train as train_job

    data = Path(shutil.copytree(colour_dataset, tmp_path / "data"))
    (data / "train" / "model").mkdir()  # a class called "model": what a run writes under that name would replace it
    (data / "train" / "model" / "m.png").write_bytes((data / "train" / "red").iterdir().__next__().read_bytes())
    listing = sorted(tmp_path.rglob("*"))
    for output, relation in ((data, "is"), (data / "train", "sits inside"), (tmp_path, "holds")):
        assert train_job.main(["--data-dir", str(data), "--output-dir", str(output), "--overwrite", "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == (f"error: --output-dir {output} {relation} the data directory {data}: "
                                                   "outputs would land among the images, or replace some; choose an "
                                                   "--output-dir outside the data")
    # --overwrite of a folder that is not a run's replaces nothing in it: refused where a run's name is taken.
    assert train_job.main(["--data-dir", str(colour_dataset), "--output-dir", str(data / "train"), "--overwrite",
                           "--batch-size", "8", "--backbone", tiny_backbone, "--image-size", "32", "--quiet"]) == 2
    assert "is not a run's directory (no config.json of a run) and holds model" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == listing
