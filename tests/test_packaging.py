"""Packaging as napari plugins do: no Qt binding in the base dependencies, optional features behind extras that
a missing package names in one sentence."""

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from napari_mine.errors import EXTRAS, MineInputError, require_extra

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
QT_BINDINGS = {"pyqt5", "pyqt6", "pyside2", "pyside6"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def _check_one_sentence(message: str, extra: str, packages) -> None:
    assert f"pip install 'napari-mine[{extra}]'." in message
    assert all(package in message for package in packages)
    assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message


def test_base_dependencies_have_no_qt_binding():
    base = {_name(requirement) for requirement in PYPROJECT["dependencies"]}
    assert not base & QT_BINDINGS
    assert "qtpy" in base and "magicgui" not in base
    assert not base & {"diffusers", "transformers", "distributed"}
    assert not any("distributed" in requirement for requirement in PYPROJECT["dependencies"])
    assert {_name(r) for r in PYPROJECT["optional-dependencies"]["pyqt6"]} == {"pyqt6"}


def test_extras_in_pyproject_match_the_messages():
    optional = PYPROJECT["optional-dependencies"]
    for extra, (_, packages) in EXTRAS.items():
        declared = " ".join(optional[extra])
        assert all(package in declared for package in packages), extra
        assert extra in optional["all"][0] and "pyqt6" in optional["all"][0]


@pytest.mark.parametrize("missing", ["diffusers", "transformers"])
@pytest.mark.parametrize("call", ["random_pipeline", "load_pipeline", "DiffusionGenerator"])
def test_diffusion_without_its_packages_names_the_extra(monkeypatch, missing, call):
    from napari_mine.generate import diffusion

    monkeypatch.setitem(sys.modules, missing, None)  # what `import missing` sees when it is not installed
    calls = {"random_pipeline": lambda: diffusion.random_pipeline(),
             "load_pipeline": lambda: diffusion.load_pipeline("stabilityai/sd-turbo", "text2image"),
             "DiffusionGenerator": lambda: diffusion.DiffusionGenerator(object())}
    with pytest.raises(MineInputError) as error:
        calls[call]()
    _check_one_sentence(str(error.value), "diffusion", ("diffusers", "transformers"))
    assert str(error.value).startswith("The diffusion generator needs the optional packages")


@pytest.mark.parametrize("call", ["connect", "run_chunks"])
def test_dask_cluster_without_distributed_names_the_extra(monkeypatch, call):
    from napari_mine import distributed

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MineInputError) as error:
        if call == "connect":
            distributed.connect("local")
        else:
            distributed.run_chunks(None, [], None, client=object())
    _check_one_sentence(str(error.value), "dask", ("distributed",))
    assert "optional package distributed" in str(error.value)


def test_a_broken_installed_package_keeps_its_own_error(monkeypatch):
    real = importlib.import_module

    def broken(name, *args):
        if name == "diffusers":
            raise ModuleNotFoundError("No module named 'huggingface_hub'", name="huggingface_hub")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="huggingface_hub"):
        require_extra("diffusion")


def test_the_package_imports_without_qt_or_optional_packages():
    blocked = ["diffusers", "transformers", "distributed", "PyQt5", "PyQt6", "PySide2", "PySide6"]
    code = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            "import napari_mine, napari_mine.cli, napari_mine.generate, napari_mine.pipeline, "
            "napari_mine.distributed, napari_mine._reader\n"
            "from napari_mine.errors import MineInputError\n"
            "from napari_mine.generate import random_pipeline\n"
            "try:\n    random_pipeline()\nexcept MineInputError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_one_sentence(result.stdout.strip(), "diffusion", ("diffusers", "transformers"))
