"""``python -m cbigan.export ...``: the ``cbigan export`` command (:mod:`cbigan.cli.export`; the library is
:mod:`cbigan.serving.export`)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("cbigan.cli.export", run_name="__main__", alter_sys=True)
