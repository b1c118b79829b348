"""Packaging: metadata lives in setup.cfg; this file only ships ``blip3o_petrel.pth``.

The .pth file must land at the top of site-packages (Python runs ``import``
lines of .pth files found there at start-up), which setup.cfg cannot express.
``build_py`` copies it next to the top-level modules, so it is in the wheel
(``pip install .``); an editable wheel (``pip install -e .``, PEP 660) takes
only what its build writes to the wheel directory, so there it is copied to
the ``install_lib`` that setuptools' editable_wheel points at that directory.
"""
from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "blip3o_petrel.pth"


class build_py_with_pth(build_py):  # lower case, as setuptools names its commands
    """build_py that also ships blip3o_petrel.pth (see the module docstring)."""

    def run(self) -> None:
        super().run()
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH)
        targets = [self.build_lib]
        if getattr(self, "editable_mode", False):
            install_lib = getattr(self.get_finalized_command("install"), "install_lib", None)
            if install_lib:
                targets = [install_lib]
        for target in targets:
            self.mkpath(target)
            self.copy_file(source, os.path.join(target, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
