"""``python -m cbigan.predict ...``: the ``cbigan predict`` command (:mod:`cbigan.cli.predict`; the library is
:mod:`cbigan.serving.predict`)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("cbigan.cli.predict", run_name="__main__", alter_sys=True)
