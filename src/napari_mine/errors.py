"""The exception for mistakes a user can fix, and the one a cancelled step raises.

Every message is one sentence that says what was wrong and what to do, so the CLI and the viewer can show it
as it is instead of a stack trace.
"""


class MineInputError(ValueError):
    """Bad input: a file, a parameter or a model that cannot be used as given."""


class Cancelled(RuntimeError):
    """Raised inside a long step when `should_stop()` asked it to end; nothing was written."""


# The optional features, by the pyproject extra that installs them: extra -> (feature, its packages).
EXTRAS = {"diffusion": ("The diffusion generator", ("diffusers", "transformers")),
          "dask": ("Running on a Dask cluster (features, evaluation across seeds)", ("distributed",))}


def require_extra(extra: str) -> None:
    """Import the packages of an optional feature, or raise one sentence naming the extra that installs them."""
    import importlib

    feature, packages = EXTRAS[extra]
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as error:
            if (error.name or package).split(".")[0] not in packages:
                raise  # an installed package that is broken: its own error says more
            noun = "package" if len(packages) == 1 else "packages"
            raise MineInputError(f"{feature} needs the optional {noun} {' and '.join(packages)}: "
                                 f"pip install 'napari-mine[{extra}]'.") from None
