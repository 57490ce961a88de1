"""A wheel of manyforge carries what its pipeline reads besides the package (the matrix, the
Dockerfile templates and in-image scripts, the host scripts, policies, configure answers) in
manyforge/_data, so a downstream project builds derived images with nothing but the install."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ["images.yaml", "docker", "scripts", "policies", "configure-answers"]


class BuildWithData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # an editable install reads the checkout itself
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / "manyforge" / "_data"
        for name in DATA:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, dest / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": BuildWithData})
