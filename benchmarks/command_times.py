#!/usr/bin/env python
"""Time README's main job and test command with a cold and a warm Theano cache.

Each command runs twice in a subprocess with ``THEANO_FLAGS`` naming one
fresh, empty ``base_compiledir``: the first run compiles every C module
(cold cache), the second finds them (warm cache). Wall seconds, exit status,
the last line of output, and the load average sampled every 5 s during the
run (other jobs on the machine show there) are written as JSON; the table in
README.md is generated from that file by ``python -m binary_net.report
--markdown-tables``.

    python benchmarks/command_times.py --output benchmarks/results/command_times.json
    python benchmarks/command_times.py --cases main-job --output /tmp/t.json

The commands run in the repository root, with this interpreter as
``python``; the main job reads MNIST from ``--data-dir`` (default
``../shared/datasets/mnist``, as README's offline variant) and writes into a
temporary directory.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (command as README writes it, with {data_dir} and {out} filled in)
CASES = {
    "main-job": "python mnist.py --data-dir {data_dir} --num-units 512 --epochs 10 "
                "--output-dir {out}/mnist-quick --no-progress",
    "tests": "python -m pytest -q tests",
}


def machine():
    """CPU model and core count from /proc/cpuinfo, e.g. 'AMD EPYC, 2 cores'."""
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "{}, {} cores".format(model, os.cpu_count())


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every ``period`` seconds."""

    def __init__(self, period=5.0):
        super().__init__(daemon=True)
        self.period, self.samples, self.done = period, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append(os.getloadavg()[0])
            self.done.wait(self.period)


def run_once(command, compiledir):
    """Run ``command`` in ROOT; return a dict of its timing and outcome."""
    env = dict(os.environ)
    env["THEANO_FLAGS"] = "base_compiledir=" + compiledir
    # "python" in README means the environment's interpreter: put ours first.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    sampler = LoadSampler()
    load_start = os.getloadavg()
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.run(command, shell=True, cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {
        "seconds": seconds,
        "returncode": proc.returncode,
        "last_line": lines[-1] if lines else "",
        "load_average_start": list(load_start),
        "load_average_mean_during": (sum(sampler.samples) / len(sampler.samples)
                                     if sampler.samples else None),
        "load_average_max_during": max(sampler.samples) if sampler.samples else None,
    }


def write_json(record, path):
    """Write ``record`` to ``path`` atomically (a temporary file, then rename)."""
    tmp_path = path + ".tmp"
    with open(tmp_path, "w") as handle:
        handle.write(json.dumps(record, indent=1) + "\n")
    os.replace(tmp_path, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES),
                        default=["tests", "main-job"])
    parser.add_argument("--data-dir", default="../shared/datasets/mnist")
    parser.add_argument("--output", metavar="FILE.json")
    args = parser.parse_args(argv)

    record = {
        "benchmark": "command_times",
        "machine": machine(),
        "python": platform.python_version(),
        "started_utc": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": "cold: empty Theano base_compiledir; warm: the same directory "
                "right after; load_average_*: other jobs were running when it is "
                "well above 0",
        "cases": {},
    }
    try:
        record["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.strip()
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="command_times_") as tmp:
        for name in args.cases:
            shown = CASES[name].format(data_dir=args.data_dir, out="runs")
            compiledir = os.path.join(tmp, "theano-" + name)
            os.makedirs(compiledir)
            case = {"command": shown}
            for cache in ("cold", "warm"):
                # each run writes its own folder (a second run into the first's
                # would be refused: its checkpoint exists)
                out = os.path.join(tmp, cache)
                command = CASES[name].format(data_dir=shlex.quote(args.data_dir), out=out)
                print("{} ({} cache): {}".format(name, cache, shown), flush=True)
                case[cache] = run_once(command, compiledir)
                # the temporary output folder is shown as README's runs/
                case[cache]["last_line"] = case[cache]["last_line"].replace(out, "runs")
                print("  {:.1f} s, exit {}, {}".format(
                    case[cache]["seconds"], case[cache]["returncode"],
                    case[cache]["last_line"]), flush=True)
            record["cases"][name] = case
            record["finished_utc"] = datetime.datetime.utcnow().strftime(
                "%Y-%m-%dT%H:%M:%SZ")
            if args.output:   # after every case, so a long run keeps what it has
                write_json(record, args.output)
    failed = [n for n, c in record["cases"].items()
              if c["cold"]["returncode"] or c["warm"]["returncode"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
