"""Data-parallel analysis: two CPU processes under torchrun (gloo) split the batches, add their
sums, and reach the estimates and configurations of one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

SCRIPT = r'''
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
from t2n.analyse import Analyser, Bag
from t2n.analyse.parallel import init_from_env, is_main, world_size
from test_analyse import inputs, mlp

init_from_env("cpu")
analyser = Analyser(mlp(), Bag("min_max_q4_0_all", "ptq_int8"), calibration_data=inputs(),
                    task="classification")
results = analyser.run(num_configs=4, measure_latency=False)
grad = analyser.estimates("grad")
if is_main():
    json.dump({"processes": world_size(),
               "batches": len(analyser.batches()[0]),
               "value": {"|".join(k): v for k, v in analyser.estimates("value").items()},
               "grad": {"|".join(k): v for k, v in grad.items()},
               "configs": {str(b): r.config.choices for b, r in results.items()},
               "real": {str(b): r.real_loss for b, r in results.items()}},
              open(sys.argv[1], "w"))
'''


def _run(tmp_path, nproc):
    script = tmp_path / "analyse_dp.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out{nproc}.json"
    tests = str(Path(__file__).parent)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, script, out, tests]
    else:
        cmd = [BIN / "torchrun", "--standalone", f"--nproc-per-node={nproc}", script, out,
               tests]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          timeout=600)
    causes = [l for l in proc.stderr.splitlines()
              if any(w in l for w in ("Error", "what()", "terminate", "Abort"))]
    assert proc.returncode == 0, "\n".join(causes[:20]) + "\n" + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow   # starts three python processes
def test_two_processes_reach_the_estimates_and_configurations_of_one(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["batches"] == one["batches"] // 2          # each process took half
    assert one["configs"] == two["configs"]
    for kind in ("value", "grad"):
        assert one[kind].keys() == two[kind].keys()
        for k, v in one[kind].items():
            assert two[kind][k] == pytest.approx(v, rel=1e-6), (kind, k)
    for b, v in one["real"].items():
        assert two["real"][b] == pytest.approx(v, rel=1e-6, abs=1e-12)
