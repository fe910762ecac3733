"""Every exception ifengine defines derives from one root, IFEngineError, and keeps the builtin base
users catch today (ValueError, RuntimeError, ...)."""

import importlib
import inspect
import pkgutil

import pytest

import ifengine
from ifengine.errors import DamagedFileError, IFEngineError, damaged_folder

# Modules that need an optional dependency this machine may lack (TensorRT, CUDA bindings).
OPTIONAL = ("tensorrt", "cuda")


def package_modules():
    for info in pkgutil.walk_packages(ifengine.__path__, "ifengine."):
        try:
            yield importlib.import_module(info.name)
        except ImportError as err:
            if not any(name in str(err) for name in OPTIONAL):
                raise


def project_exceptions():
    seen = {}
    for module in package_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("ifengine"):
                seen[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return seen


def test_every_project_exception_derives_from_the_root():
    found = project_exceptions()
    assert len(found) >= 25, sorted(found)  # the walk really reached the package
    strays = sorted(name for name, cls in found.items() if not issubclass(cls, IFEngineError))
    assert not strays, f"not under IFEngineError: {strays}"


def test_the_root_keeps_the_builtin_bases():
    assert issubclass(DamagedFileError, ValueError)
    assert not issubclass(IFEngineError, (ValueError, TypeError, RuntimeError))


def test_damaged_folder_passes_project_errors_through_and_wraps_the_rest(tmp_path):
    class Ours(IFEngineError, ValueError):
        __module__ = "elsewhere"  # the root decides, not the module the class lives in

    with pytest.raises(Ours), damaged_folder(tmp_path):
        raise Ours("mine")
    with pytest.raises(DamagedFileError, match="damaged or incomplete"), damaged_folder(tmp_path):
        raise Exception("tokenizers said no")
