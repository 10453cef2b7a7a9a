"""Runs rows of tests/test_bad_inputs.py one after another in this process, each as its entry point runs.

``python -m tests.bad_input_driver ROWS.json RESULTS.jsonl``: every row is ``{"name", "kind", "target", "args"}``
with ``kind`` ``console`` (a console script of the installed package: its entry function, called as the script
calls it) or ``module`` (``python -m target``, through :mod:`runpy`). Each row's stdout and stderr are captured
(logging handlers are dropped before it, so the ones it sets up write into the capture), an exception escaping
the entry point is printed as Python prints it (a ``Traceback``, exit code 1), and one JSON line per row is
written (and flushed) to RESULTS: a row that hangs is the first one without a line.

Starting Python with torch and open_clip costs ~5 s on the test machine: grouping rows this way keeps the
suite's processes few while each row still meets the real entry point in a fresh-enough process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import runpy
import sys
import traceback
import warnings
from importlib.metadata import entry_points


def _console_entry(name: str):
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    return ep.load()


def run_row(row: dict) -> dict:
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    saved_argv = sys.argv
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            sys.argv = [row["target"], *row["args"]]
            if row["kind"] == "module":
                with warnings.catch_warnings():  # runpy's note that the module was imported by an earlier row
                    warnings.simplefilter("ignore", RuntimeWarning)
                    runpy.run_module(row["target"], run_name="__main__", alter_sys=True)
            else:
                sys.exit(_console_entry(row["target"])())
        except SystemExit as e:
            if isinstance(e.code, int) or e.code is None:
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 (what Python does with an exception that escapes a program)
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved_argv
    return {
        "name": row["name"],
        "code": code,
        "stdout": out.getvalue()[-4000:],
        "stderr": err.getvalue()[-8000:],
    }


def main(argv: list[str]) -> int:
    rows = json.loads(open(argv[0]).read())
    with open(argv[1], "a") as results:
        for row in rows:
            results.write(json.dumps(run_row(row)) + "\n")
            results.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
