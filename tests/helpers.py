"""Helpers shared by the test files."""
import contextlib
import glob
import logging
import os
import re

import pytest

from utils.versions import torch_version

# Long runs whose subject does not depend on the torch version (tools, worked examples): checked on the
# newest stack only, to keep the oldest stack's suite short.
newest_stack_only = pytest.mark.skipif(torch_version() < (2, 3), reason="checked on the newest torch stack")


def result_file(out, prefix):
    """The one test.py result ``<prefix>_<evaluation hash>.json`` in ``out`` (``prefix`` like
    ``test_best_Synthetic``); fails when there is none or more than one."""
    pattern = re.compile(re.escape(prefix) + r"_[0-9a-f]{8}\.json$")
    found = [p for p in glob.glob(os.path.join(out, prefix + "_*.json")) if pattern.search(os.path.basename(p))]
    assert len(found) == 1, f"expected one {prefix}_<hash>.json in {out}, found {sorted(os.listdir(out))}"
    return found[0]


@contextlib.contextmanager
def log_records(name):
    """The list of records logged to logger ``name`` inside the block (the logger's own level applies)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(name).addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger(name).removeHandler(handler)


def python(*args, cwd=None, expect=0, timeout=300, env=None):
    """``python args...`` in a fresh interpreter (the test's Python), output captured. With ``expect`` (an exit
    code) the code is checked, the output's tail shown when it differs; ``expect=None`` leaves it to the caller.
    ``env``: the whole environment (default: this process's)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, *map(str, args)], cwd=None if cwd is None else str(cwd), capture_output=True,
                       text=True, timeout=timeout, env=env)
    if expect is not None:
        assert r.returncode == expect, f"exit code {r.returncode}, expected {expect}\n" + r.stdout[-3000:] + r.stderr[-4000:]
    return r


# Runs commands one after another in one interpreter, each command's exit code and stderr kept apart.
_DRIVER = r"""
import contextlib, io, json, os, runpy, sys
results, path = [], list(sys.path)
for cmd in json.loads(sys.argv[1]):
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            if cmd[0] == "-c":
                sys.argv = ["-c"]
                exec(compile(cmd[1], "<command>", "exec"), {"__name__": "__main__"})
            else:
                sys.argv, sys.path[:] = cmd, [os.path.dirname(os.path.abspath(cmd[0]))] + path
                runpy.run_path(cmd[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results.append({"code": code, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def python_commands(*commands, cwd=None, env=None, timeout=600):
    """Several ``python`` commands in one fresh interpreter, one after another: each is ``([script, args...]
    or ["-c", code], expected exit code)``; a script runs as ``__main__`` with its folder first on the path,
    as ``python script`` would. Checks each exit code; returns (each command's stderr, the stdout of all).
    Saves an interpreter start (several seconds with torch) per command."""
    import json
    r = python("-c", _DRIVER, json.dumps([[str(a) for a in cmd] for cmd, _ in commands]), cwd=cwd, env=env,
               timeout=timeout)
    results = json.loads(r.stdout.rsplit("RESULTS ", 1)[1])
    for (cmd, expect), res in zip(commands, results):
        assert res["code"] == expect, f"{cmd}: exit code {res['code']}, expected {expect}\n{res['stderr'][-3000:]}"
    return [res["stderr"] for res in results], r.stdout
