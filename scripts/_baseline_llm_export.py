"""Run torch-to-nnef 0.24.12's LLM exporter (the ``t2n_export_llm_to_tract`` CLI) and time its
compression step. scripts/bench_quality.py runs this with the BASELINE python (a separate virtual
environment, see scripts/setup_baseline.sh), one fresh process per export:

    python _baseline_llm_export.py TIMINGS.json -- <t2n_export_llm_to_tract arguments>

Everything after ``--`` is handed unchanged to ``torch_to_nnef_llm.cli.main`` (the function the
``t2n_export_llm_to_tract`` console script calls), so the export is exactly the CLI's. The only
addition is a logging handler on the ``torch_to_nnef_llm`` logger that stamps, with
``time.perf_counter``, the exporter's own log lines around its compression step
("start compresssion: ..." and "successfully applied compression: ...", logged by
``LLMExporter.prepare``), and around the NNEF export ("start export with 'torch_to_nnef'").
TIMINGS.json receives those stamps relative to the start of this process's ``main()`` call and
its total duration (the console log's own timestamps only have 1 s resolution).
"""
import json
import logging
import sys
import time

MARKS = {
    "start compresssion": "compress_start",   # sic: torch-to-nnef's spelling
    "successfully applied compression": "compress_end",
    "start export with 'torch_to_nnef'": "export_start",
}


class _Stamp(logging.Handler):
    def __init__(self, t0):
        super().__init__(level=logging.INFO)
        self.t0 = t0
        self.marks = {}

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a malformed record is not ours to fix
            return
        for prefix, key in MARKS.items():
            if msg.startswith(prefix) and key not in self.marks:
                self.marks[key] = time.perf_counter() - self.t0


def main():
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: _baseline_llm_export.py TIMINGS.json -- <t2n_export_llm_to_tract args>")
    out, cli_args = sys.argv[1], sys.argv[3:]
    t_import = time.perf_counter()
    from torch_to_nnef_llm.cli import main as cli_main  # noqa: E402 (timed as part of the run)

    t0 = time.perf_counter()
    stamp = _Stamp(t0)
    lg = logging.getLogger("torch_to_nnef_llm")
    lg.setLevel(logging.INFO)
    lg.addHandler(stamp)
    sys.argv = ["t2n_export_llm_to_tract", *cli_args]
    ok = False
    try:
        cli_main()
        ok = True
    finally:
        total = time.perf_counter() - t0
        marks = dict(stamp.marks)
        if "compress_start" in marks and "compress_end" in marks:
            marks["compress_s"] = marks["compress_end"] - marks["compress_start"]
        marks.update(cli_s=total, import_s=t0 - t_import, ok=ok)
        with open(out, "w") as f:
            json.dump(marks, f, indent=1)


if __name__ == "__main__":
    main()
