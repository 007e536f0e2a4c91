"""Plug-ins: a user's methods, models, data sets and recipes, registered with the decorators
pcbench uses for its own (`pcbench.methods.register`, `pcbench.models.register_model`,
`pcbench.data.register_dataset`, `pcbench.recipes.register_recipe`), from

- a file or a package folder (`--plugin ./mymethod.py`, `plugins:` in a suite), or a module
  on the Python path (`--plugin mylab.losses`);
- the `pcbench.plugins` entry-point group of an installed package, loaded on first use.

A trial's config names the plug-ins it needs (`TrialConfig.plugins`), so every process that
parses it (a Ray trial, a DDP worker, a cohort) imports them first: by module name where Ray's
runtime environment shipped them (`py_modules`, on a cluster), else from their path. Plain
importlib: no Ray, no MLflow."""

import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from pathlib import Path

from pcbench.errors import UserError

ENTRY_POINT_GROUP = "pcbench.plugins"
_loaded: dict[str, str] = {}  # spec -> module name
_entry_points_loaded = False


def resolve(spec: str, relative_to: Path | None = None) -> str:
    """A spec as a trial records it: a file or folder as its absolute path, a module as its
    name. Raises UserError when a path names nothing."""
    looks_like_path = spec.endswith(".py") or "/" in spec or spec.startswith(".")
    path = Path(spec).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if looks_like_path or path.exists():
        if not path.exists():
            raise UserError(f"plugin {spec}: no such file or folder; give the path of a .py file, a "
                            f"package folder, or an importable module name")
        if path.is_file() and path.suffix != ".py":
            raise UserError(f"plugin {spec}: not a Python file; give a .py file or a package folder")
        return str(path.resolve())
    return spec


def module_name(spec: str) -> str:
    """The name a spec is imported under (a file's stem, a folder's name)."""
    return Path(spec).stem if "/" in spec else spec


def load(specs: list[str] | tuple[str, ...]) -> list[str]:
    """Import each plug-in once per process (resolved specs, as `resolve` gives them); returns
    their module names. An import error becomes one line quoting the plug-in's own message."""
    load_installed()
    return [_load_one(spec) for spec in specs]


def _load_one(spec: str) -> str:
    if spec in _loaded:
        return _loaded[spec]
    name = module_name(spec)
    path = Path(spec) if "/" in spec else None
    existing = sys.modules.get(name)
    if path is not None and existing is not None and not _same_source(existing, path):
        raise UserError(f"plugin {spec}: a module named '{name}' is already imported from "
                        f"{getattr(existing, '__file__', 'elsewhere')}; rename the plugin file")
    try:
        if existing is None:
            _import(name, path)
    except UserError as error:
        raise UserError(f"plugin {spec}: {error}") from None
    except Exception as error:  # noqa: BLE001 - whatever the user's code raised, shown as one line
        where = traceback.extract_tb(error.__traceback__)[-1]
        raise UserError(f"plugin {spec} failed to import: {type(error).__name__}: {error} "
                        f"({Path(where.filename).name}, line {where.lineno}); fix the plugin") from None
    _loaded[spec] = name
    return name


def _import(name: str, path: Path | None) -> None:
    """From its path where the path exists (this machine, or a shared file system), else by
    name (shipped by Ray's runtime environment, or installed)."""
    if path is None or not path.exists():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            where = f"not found at {path}, nor" if path is not None else "there is"
            raise UserError(f"{where} no module named '{name}' on the Python path; give a file path, "
                            f"or install the module") from None
        return
    init = path / "__init__.py" if path.is_dir() else path
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its classes must be importable by name (pickling)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _same_source(module, path: Path) -> bool:
    source = getattr(module, "__file__", None)
    if source is None:
        return False
    source = Path(source).resolve()
    return source == path.resolve() or source.parent == path.resolve()  # a package's __init__.py


def load_installed() -> None:
    """The `pcbench.plugins` entry points of the installed packages, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # noqa: BLE001
            package = entry.dist.name if entry.dist else "?"
            raise UserError(f"installed plugin {entry.value} ({package}) failed to import: "
                            f"{type(error).__name__}: {error}; fix or uninstall it") from None


def origin(module: str) -> str:
    """Where a registered thing comes from: "pcbench", or the plug-in module that made it."""
    return "pcbench" if module == "pcbench" or module.startswith("pcbench.") else f"plugin {module}"


def check_unique(kind: str, name: str, new: object, existing: object | None) -> None:
    """A plug-in may not replace a built-in (or another plug-in's) entry of the same name; the
    same module imported again (a worker, a re-run) re-registers its own."""
    if existing is None:
        return
    same = (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == \
        (getattr(new, "__module__", None), getattr(new, "__qualname__", None))
    if not same:
        raise UserError(f"{kind} '{name}' is already registered by "
                        f"{origin(getattr(existing, '__module__', '?'))}; give yours another name")


def shipped_paths(specs: list[str]) -> list[str]:
    """The files and folders Ray's runtime environment must carry to every node (`py_modules`)."""
    return [spec for spec in specs if "/" in spec]
