"""``python -m cbigan.plots ...``: the ``cbigan plots`` command (:mod:`cbigan.cli.plots`; the library is
:mod:`cbigan.reporting.plots`)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("cbigan.cli.plots", run_name="__main__", alter_sys=True)
