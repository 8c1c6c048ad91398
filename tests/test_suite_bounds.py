"""The suite always ends: a test past its limit fails, naming itself, with every thread's stack; a test stuck where
the timeout's signal cannot reach it ends the session a little later, the same way (tests/conftest.py). The two
tests that overrun run only in a pytest of their own, when TL_TEST_OVERRUN names them: never in the default run."""
import ast
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO

OVERRUN = os.environ.get("TL_TEST_OVERRUN")


@pytest.mark.skipif(OVERRUN != "sleeping", reason="overruns on purpose: run by the test below")
@pytest.mark.timeout(1)
def test_overrun_sleeping():
    threading.Thread(target=time.sleep, args=(30,), name="a-helper-thread", daemon=True).start()
    time.sleep(30)


@pytest.mark.skipif(OVERRUN != "stuck", reason="overruns on purpose: run by the test below")
@pytest.mark.timeout(1)
def test_overrun_stuck():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as in C code that never returns: no handler runs
    time.sleep(30)


def overrun(name: str, **environment) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", f"tests/test_suite_bounds.py::test_overrun_{name}"],
                          cwd=REPO, env={**os.environ, "TL_TEST_OVERRUN": name, **environment}, capture_output=True,
                          text=True, timeout=120)
    return done, time.monotonic() - started


def test_a_test_past_its_limit_fails_naming_itself_with_every_threads_stack():
    done, seconds = overrun("sleeping")
    output = done.stdout + done.stderr
    assert done.returncode == 1 and seconds < 30, output[-3000:]
    assert "Failed: Timeout (>1.0s) from pytest-timeout." in output
    assert "FAILED tests/test_suite_bounds.py::test_overrun_sleeping" in output
    assert "Stack of a-helper-thread" in output and "def test_overrun_sleeping" in output


def test_a_test_stuck_where_the_signal_cannot_reach_ends_the_session_naming_it():
    done, seconds = overrun("stuck", TL_TEST_HANG_GRACE="2")
    assert done.returncode == 1 and seconds < 30, (done.stdout + done.stderr)[-3000:]
    assert ("tests/test_suite_bounds.py::test_overrun_stuck ran past its limit of 1 s and did not stop 2 s later"
            in done.stderr), done.stderr[-3000:]
    assert "in test_overrun_stuck" in done.stderr  # the main thread's stack, from faulthandler
    assert done.stderr.strip().endswith("Ending the test session: tests/test_suite_bounds.py::test_overrun_stuck timed out.")


WAITS = {"run", "call", "check_call", "check_output", "communicate", "wait"}


def test_every_wait_for_a_process_in_the_tests_has_a_timeout():
    """subprocess.run (and its kin), Popen.communicate and Popen.wait: each with a timeout."""
    unbounded = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WAITS):
                continue
            name, receiver = node.func.attr, node.func.value
            timeout = any(keyword.arg == "timeout" for keyword in node.keywords)
            if isinstance(receiver, ast.Name) and receiver.id == "subprocess":
                bounded = timeout
            elif name in ("wait", "communicate"):  # Popen.wait(timeout), Popen.communicate(input, timeout)
                bounded = timeout or len(node.args) > (name == "communicate")
            else:
                continue
            if not bounded:
                unbounded.append(f"{path.name}:{node.lineno}")
    assert not unbounded, f"no timeout: {unbounded}"
