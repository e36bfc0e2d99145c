"""Everything is in pyproject.toml but one file: ``dlm-cli-lmeval.pth``, which must sit at the top of
site-packages (not inside a package) so that lm-eval's own ``lm_eval --model dlm`` finds dlm
(see dlm_cli/lmeval_plugin.py). setuptools has no declarative way to ship such a file."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "dlm-cli-lmeval.pth"


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        src = str(Path(__file__).parent / PTH)
        self.copy_file(src, str(Path(self.build_lib) / PTH), preserve_mode=False)
        if getattr(self, "editable_mode", False):
            # pip install -e: setuptools' editable wheel is made of its install_lib folder plus its own
            # finder, and does not carry build_lib's loose files over; put the .pth there too.
            self.copy_file(src, str(Path(self.get_finalized_command("install").install_lib) / PTH),
                           preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
