"""binary_net.compat: Theano defaults that respect the user's flags, Lasagne 0.1 aliases."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code, env_extra):
    env = dict(os.environ)
    # This process imported binary_net.compat already (conftest): start clean.
    for name in ("THEANO_FLAGS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                 "BINARY_NET_GOMP_SPINCOUNT"):
        env.pop(name, None)
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_defaults_are_set_when_the_user_set_nothing(tmp_path):
    line = run_python("import binary_net.compat, theano; "
                      "print(theano.config.floatX, repr(theano.config.blas__ldflags))",
                      {"THEANORC": str(tmp_path / "none")})
    assert line == "float32 ''"


def test_user_flags_win(tmp_path):
    line = run_python("import binary_net.compat, theano; "
                      "print(theano.config.floatX, repr(theano.config.blas__ldflags))",
                      {"THEANO_FLAGS": "floatX=float64,blas__ldflags=-lfoo",
                       "THEANORC": str(tmp_path / "none")})
    assert line == "float64 '-lfoo'"


def test_theanorc_setting_wins(tmp_path):
    rc = tmp_path / "theanorc"
    rc.write_text("[global]\nfloatX = float64\n")
    line = run_python("import binary_net.compat, theano; print(theano.config.floatX)",
                      {"THEANORC": str(rc)})
    assert line == "float64"


def test_lasagne_01_imports_and_pools_through_the_aliases():
    line = run_python(
        "import binary_net.compat, numpy as np, theano, theano.tensor as T, lasagne\n"
        "from theano.sandbox.rng_mrg import MRG_RandomStreams\n"
        "x = T.tensor4()\n"
        "l = lasagne.layers.MaxPool2DLayer(lasagne.layers.InputLayer((1, 1, 4, 4), x), 2)\n"
        "f = theano.function([x], lasagne.layers.get_output(l))\n"
        "a = np.arange(16, dtype='float32').reshape(1, 1, 4, 4)\n"
        "print(f(a).ravel().tolist())", {})
    assert line == "[5.0, 7.0, 13.0, 15.0]"


def test_package_import_does_not_load_theano():
    line = run_python("import sys, binary_net, binary_net.datasets, binary_net.report; "
                      "print('theano' in sys.modules, 'lasagne' in sys.modules)", {})
    assert line == "False False"


def test_openmp_threads_spin_for_inference_sleep_for_training_unless_the_user_chose():
    code = ("import os, binary_net.compat as c; a = os.environ.get('GOMP_SPINCOUNT'); "
            "c.openmp_for('training'); "
            "print(a, os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    assert run_python(code, {}) == "10000 0 None"
    assert run_python(code, {"OMP_WAIT_POLICY": "PASSIVE"}) == "None None PASSIVE"
    assert run_python(code, {"GOMP_SPINCOUNT": "5"}) == "5 5 None"


def test_child_process_of_an_importer_still_trains_without_spinning():
    # A driver that imported binary_net (e.g. a notebook or a sweep script) and starts a
    # training script as a child process: the child inherits GOMP_SPINCOUNT=10000 that
    # compat set in the parent, not one the user chose, so openmp_for('training') in the
    # child should still give 0 (found by the 'trial' review; fails at b1a3ca7: '10000').
    child = ("import os, binary_net.compat as c; c.openmp_for('training'); "
             "print(os.environ.get('GOMP_SPINCOUNT'))")
    parent = ("import os, subprocess, sys, binary_net.compat; "
              f"r = subprocess.run([sys.executable, '-c', {child!r}], "
              "capture_output=True, text=True); print(r.stdout.strip() or r.stderr)")
    assert run_python(parent, {}) == "0"
