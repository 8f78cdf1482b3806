"""A run with a local student makes no network call: with every socket to anything but loopback
refused (in the notebook kernels too), `l2r run` finishes, and nothing even tried to connect out.
Newer transformers fetch Hub kernels while loading a model unless told not to (`student.use_kernels`)."""

import os
import subprocess
import sys
import textwrap

import yaml

GUARD = textwrap.dedent('''
    import os, socket

    _connect = socket.socket.connect

    def _guarded(self, address, *args):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(("127.", "::1", "localhost")):
            with open(os.environ["L2R_TEST_NET_LOG"], "a") as f:
                f.write(f"{os.getpid()} {address}\\n")
            raise OSError(f"network refused by the test: {address}")
        return _connect(self, address, *args)

    socket.socket.connect = _guarded
    open(os.environ["L2R_TEST_NET_LOG"], "a").close()
''')


def test_a_local_run_never_touches_the_network(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(GUARD)
    params = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "params", "tiny.yaml")))
    params.update(methods=["std-cot"], rounds=1, name="offline")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    log = tmp_path / "net.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "L2R_TEST_NET_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = subprocess.run([sys.executable, "-m", "l2r_lib.cli", "run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert log.is_file(), "the guard was not loaded"
    assert log.read_text() == "", log.read_text()
    assert (tmp_path / "run" / "std-cot" / "synthetic" / "round-1" / "04_evaluation.done.json").is_file()
