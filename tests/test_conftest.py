"""The suite's own rule: a test that starts a process is marked slow, or it fails saying so."""
import multiprocessing
import os
import subprocess
import sys

import pytest


def test_an_unmarked_test_that_starts_a_process_fails_saying_what_to_do():
    with pytest.raises(pytest.fail.Exception, match=r"this test starts a process \(subprocess \[.*'-c', 'pass'\]\): "
                                                    r"mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(pytest.fail.Exception, match=r"\(os.system\): mark it @pytest.mark.slow"):
        os.system("true")
    with pytest.raises(pytest.fail.Exception, match=r"\(multiprocessing.process.BaseProcess.start\): mark it @pytest.mark.slow"):
        multiprocessing.get_context("spawn").Process(target=print).start()


@pytest.mark.slow
def test_a_slow_test_starts_processes():
    assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout == "42\n"


def test_a_payload_naming_a_refused_function_still_pickles_as_that_function():
    import pickle

    class RunsTrue:
        def __reduce__(self):
            return (os.system, ("true",))

    assert b"system" in pickle.dumps(RunsTrue(), protocol=2)  # pickled, never called


def test_a_librarys_look_at_the_machine_is_not_the_tests_process():
    # what torch's first import does (ldconfig -p), whichever test imports it first
    import ctypes.util

    assert ctypes.util.find_library("c")
