"""The real `t2n` command: exports, bundle tools, and one-line errors on bad input."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

T2N = str(Path(sys.executable).with_name("t2n"))

MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return torch.relu(self.fc(x))

    def make_small():
        return Small()

    class Exotic(nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x) + torch.logcumsumexp(x, 0)
""")


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "cli_models.py").write_text(MODELS)
    return tmp_path


def t2n(workdir, *args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([T2N, *args], cwd=workdir, capture_output=True, text=True,
                          env=full_env, timeout=300)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_export_info_check(workdir):
    proc = t2n(workdir, "export", "cli_models:Small", "out.tgz", "--input-shape", "x=2,6",
               "--dynamic-axes", "x:0=B", "--dump-io")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (approximate)" in proc.stdout
    for stage in ("load", "trace", "translate", "write", "verify"):
        assert f"t2n: {stage}" in proc.stderr
    info = t2n(workdir, "info", "out.tgz")
    assert info.returncode == 0, info.stderr
    assert "input  x: B,6,f32" in info.stdout and "matmul x1" in info.stdout
    assert "t2n_version" in info.stdout and "f32" in info.stdout
    check = t2n(workdir, "check", "out.tgz")
    assert check.returncode == 0 and "ok (approximate)" in check.stdout


def test_factory_and_config_file(workdir):
    (workdir / "job.toml").write_text(textwrap.dedent("""
        [export]
        model = "cli_models:make_small"
        output = "from_config"
        input_shape = ["x=3,6"]
        check_io = "close"
    """))
    proc = t2n(workdir, "export", "--config", "job.toml", "--check-io", "very")
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract (very)" in proc.stdout  # the flag overrides the file
    assert (workdir / "from_config" / "graph.nnef").exists()


def test_missing_model(workdir):
    proc = t2n(workdir, "export", "no_such_model", "out")
    assert_user_error(proc, "model 'no_such_model' not found")
    assert not (workdir / "out").exists()


def test_bad_dotted_path(workdir):
    assert_user_error(t2n(workdir, "export", "no_such_mod:Model", "out", "--input-shape",
                          "x=1,6"), "cannot import module 'no_such_mod'")
    assert_user_error(t2n(workdir, "export", "cli_models:Nope", "out", "--input-shape",
                          "x=1,6"), "has no attribute 'Nope'")


@pytest.mark.parametrize("spec", ["x=1,a", "x", "=1,2", "x=1,2:float8"])
def test_bad_shape_syntax(workdir, spec):
    assert_user_error(t2n(workdir, "export", "cli_models:Small", "out", "--input-shape", spec),
                      "--input-shape")


def test_missing_inputs(workdir):
    assert_user_error(t2n(workdir, "export", "cli_models:Small", "out"), "needs example inputs")


def test_unsupported_ops_listed(workdir):
    proc = t2n(workdir, "export", "cli_models:Exotic", "out", "--input-shape", "x=3,3")
    assert_user_error(proc, "2 ops have no NNEF translator", "aten.linalg_inv.default",
                      "aten.logcumsumexp.default")
    assert not (workdir / "out").exists()


def test_existing_destination(workdir):
    (workdir / "out").mkdir()
    assert_user_error(t2n(workdir, "export", "cli_models:Small", "out", "--input-shape",
                          "x=1,6"), "already exists", "--overwrite")
    ok = t2n(workdir, "export", "cli_models:Small", "out", "--input-shape", "x=1,6",
             "--overwrite")
    assert ok.returncode == 0, ok.stderr


def test_uncached_hub_id(workdir):
    proc = t2n(workdir, "export", "someone/not-cached-model", "out",
               env={"HF_HOME": str(workdir / "hf"), "HF_HUB_OFFLINE": "1"})
    assert_user_error(proc, "someone/not-cached-model", "HF_HOME=" + str(workdir / "hf"))


def test_verbose_shows_traceback(workdir):
    proc = t2n(workdir, "-v", "export", "no_such_mod:Model", "out", "--input-shape", "x=1,6")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_check_without_io(workdir):
    assert t2n(workdir, "export", "cli_models:Small", "b", "--input-shape", "x=1,6"
               ).returncode == 0
    assert_user_error(t2n(workdir, "check", "b"), "no stored inputs", "--dump-io")
    assert_user_error(t2n(workdir, "info", "nothing_here"), "does not exist")


def test_ops_lists_families():
    proc = subprocess.run([T2N, "ops"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "aten.scaled_dot_product_attention.default" in proc.stdout
    assert "linalg (" in proc.stdout


STAND_IN = textwrap.dedent("""\
    #!{python}
    # Minimal stand-in for the tract command line, backed by the tract bindings: accepts the
    # arguments t2n passes and writes the outputs npz, as the real binary does.
    import sys, numpy as np, tract
    args = sys.argv[1:]
    model_path = args[0]
    inputs = np.load(args[args.index("--input-from-bundle") + 1])
    out_path = args[args.index("--save-outputs-npz") + 1]
    model = tract.nnef().with_tract_extra().with_tract_transformers().load(model_path)
    names = [model.input_name(i) for i in range(model.input_count())]
    out_names = [model.output_name(i) for i in range(model.output_count())]
    outs = model.into_runnable().run([inputs[n] for n in names])
    np.savez(out_path, **{{n: o.to_numpy() for n, o in zip(out_names, outs)}})
""")


@pytest.mark.slow   # starts several t2n processes: with the real-model tests
def test_tract_binary_option(workdir):
    exe = workdir / "tract"
    exe.write_text(STAND_IN.format(python=sys.executable))
    exe.chmod(0o755)
    proc = t2n(workdir, "export", "cli_models:Small", "out", "--input-shape", "x=2,6",
               "--tract-binary", str(exe))
    assert proc.returncode == 0, proc.stderr
    assert "verified in tract" in proc.stdout
    assert_user_error(t2n(workdir, "export", "cli_models:Small", "out2", "--input-shape",
                          "x=2,6", "--tract-binary", str(workdir / "cli_models.py")),
                      "not an executable")
