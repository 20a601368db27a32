"""Plugin discovery (entry-point group ``trainhub``) and the registries the plugins fill."""

from __future__ import annotations

import copy
import importlib
import importlib.metadata as md
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from trainhub import hookspecs
from trainhub.errors import PluginError

ENTRY_POINT_GROUP = "trainhub"
#: Core's own plugin (built-in recipe, losses, loggers), loaded first and always, like an entry point of its own.
BUILTIN_PLUGIN = "trainhub.builtin"
#: Set to 1 to load no entry-point plugins (built-ins stay).
ENV_DISABLE = "TRAINHUB_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated entry-point names: load only these.
ENV_ALLOW = "TRAINHUB_PLUGINS"
#: Set to 1 to print every hook call (hook, plugin, simple arguments, duration) to stderr.
ENV_TRACE = "TRAINHUB_TRACE_HOOKS"

REGISTRIES = ("recipes", "models", "datasets", "losses", "loggers", "optimizers", "schedules", "samplers")


def import_ref(ref: str) -> Any:
    """The object a ``"package.module:attr"`` reference names."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def is_ref(obj: Any) -> bool:
    return isinstance(obj, str) and ":" in obj


@dataclass
class Registered:
    name: str
    obj: Any  # the object, or a "module:attr" reference to it (see load)
    plugin: str  # plugin name in the manager
    distribution: str  # "trainhub" for built-ins, else the distribution that provides the entry point
    extra: tuple = ()

    def load(self) -> Any:
        """The registered object, imported on first use when it was registered by reference."""
        if is_ref(self.obj):
            try:
                self.obj = import_ref(self.obj)
            except Exception as exc:
                raise PluginError(f"{self.name!r} (plugin {self.plugin!r}, {self.distribution}): cannot import "
                                  f"{self.obj}: {type(exc).__name__}: {exc}") from None
        return self.obj


@dataclass
class RecipeEntry:
    """A registered recipe: its name and description, known without importing it, and how to build one per run."""

    name: str
    description: str
    source: Any  # a Recipe subclass, a "module:Class" reference to one, or an instance (copied for every run)
    config: Any = None  # the config class or a reference to it; None: the recipe class's ``config_class``

    def recipe_class(self) -> type:
        if is_ref(self.source):
            self.source = import_ref(self.source)
        return self.source if isinstance(self.source, type) else type(self.source)

    @property
    def config_class(self) -> type:
        """The recipe's config class (imports only the config module when registered by reference)."""
        if self.config is None:
            self.config = self.recipe_class().config_class
        elif is_ref(self.config):
            self.config = import_ref(self.config)
        return self.config

    @property
    def package(self) -> str:
        """The top-level package the recipe comes from (where its shipped ``configs/`` are)."""
        module = self.source.partition(":")[0] if is_ref(self.source) else self.recipe_class().__module__
        return module.split(".")[0]

    def build(self) -> Any:
        """A new recipe instance: each run has its own, so per-run state never leaks into the next run."""
        cls = self.recipe_class()
        if cls.name != self.name or (self.config is not None and cls.config_class is not self.config_class):
            raise PluginError(f"recipe {self.name!r} was registered with name {self.name!r} and config "
                              f"{self.config_class.__name__}, but {cls.__name__} has name {cls.name!r} and config "
                              f"{cls.config_class.__name__}")
        return copy.deepcopy(self.source) if not isinstance(self.source, type) else cls()


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    registered: dict[str, list[str]] = field(default_factory=dict)


class Plugins:
    """A pluggy manager plus the named registries that the registration hooks fill."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("trainhub")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failed: dict[str, str] = {}  # entry-point name -> one-line error
        self.registry: dict[str, dict[str, Registered]] = {k: {} for k in REGISTRIES}
        self.tracing = os.environ.get(ENV_TRACE) == "1"

    def call_impl(self, hook: str, impl: Any, kwargs: dict[str, Any]) -> Any:
        """Call one hook implementation with the arguments it asks for (each plugin separately, so
        failures can be attributed). With TRAINHUB_TRACE_HOOKS=1 every call is written to stderr as
        ``trainhub-trace: HOOK -> PLUGIN(simple args) T ms``."""
        if not self.tracing:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        pname = self.pm.get_name(impl.plugin) or repr(impl.plugin)
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if isinstance(v, (bool, int, float, str)))
        t0 = time.perf_counter()
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        finally:
            sys.stderr.write(f"trainhub-trace: {hook} -> {pname}({shown}) {1e3 * (time.perf_counter() - t0):.2f} ms\n")

    # ---- loading -------------------------------------------------------------------------------
    def add(self, plugin: Any, name: str, distribution: str = "trainhub", version: str = "") -> None:
        """Register a plugin object/module under ``name`` and collect what it registers."""
        if self.pm.has_plugin(name):
            other = self.info[name].distribution if name in self.info else "?"
            raise PluginError(
                f"plugin name {name!r} is provided by both {other!r} and {distribution!r}; uninstall one"
            )
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()  # a misspelled hook (trainhub_stepend) would otherwise never be called
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} ({distribution}): {exc}") from None
        self.info[name] = PluginInfo(name, distribution, version, getattr(plugin, "__name__", type(plugin).__name__))
        try:
            self._collect(name)
        except BaseException:  # sys.exit() in a registration hook too
            self.pm.unregister(name=name)
            del self.info[name]
            raise

    def load_entry_points(self) -> None:
        """Load every installed ``trainhub`` entry point, honouring the environment switches.

        A plugin that fails to import or register is recorded in :attr:`failed` and reported with a
        warning; the others keep working. Duplicate registrations are errors naming both sides.
        """
        if os.environ.get(ENV_DISABLE) == "1":
            return
        allow = {n.strip() for n in os.environ.get(ENV_ALLOW, "").split(",") if n.strip()}
        seen: set[tuple[str, str]] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            if (ep.name, dist) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, dist))
            if allow and ep.name not in allow:
                continue
            version = ep.dist.version if ep.dist else ""
            try:
                obj = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down, nor exit
                self._fail(ep.name, dist, exc)
                continue
            try:
                self.add(obj, ep.name, dist, version)
            except PluginError:
                raise
            except (Exception, SystemExit) as exc:
                self._fail(ep.name, dist, exc)

    def _fail(self, name: str, dist: str, exc: BaseException) -> None:
        if isinstance(exc, SystemExit):
            msg = f"it called sys.exit({exc.code!r}) while loading"
        else:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.failed[name] = f"{dist}: {msg}"
        warnings.warn(f"trainhub plugin {name!r} ({dist}) failed to load and is skipped: {msg}", stacklevel=2)

    def _collect(self, plugin_name: str) -> None:
        plugin = self.pm.get_plugin(plugin_name)
        info = self.info[plugin_name]
        for kind in REGISTRIES:
            hook = getattr(self.pm.hook, f"trainhub_register_{kind}")
            impls = [i for i in hook.get_hookimpls() if i.plugin is plugin]
            for impl in impls:
                self.call_impl(f"trainhub_register_{kind}", impl, {"register": self._registrar(kind, plugin_name, info.distribution)})

    def _registrar(self, kind: str, plugin: str, dist: str) -> Callable[..., None]:
        table = self.registry[kind]

        def register(name_or_obj: Any, obj: Any = None, *extra: Any, **kw: Any) -> None:
            if kind == "recipes":
                name, obj = _recipe_entry(plugin, name_or_obj, obj, **kw)
            else:
                name = name_or_obj
                if obj is None:
                    raise PluginError(f"plugin {plugin!r}: register({name!r}, factory) needs a factory")
            if name in table:
                prev = table[name]
                raise PluginError(
                    f"{kind[:-1]} {name!r} is registered by both {prev.distribution!r} (plugin {prev.plugin!r}) "
                    f"and {dist!r} (plugin {plugin!r})"
                )
            table[name] = Registered(name, obj, plugin, dist, tuple(extra))
            self.info[plugin].registered.setdefault(kind, []).append(name)

        return register

    # ---- lookup --------------------------------------------------------------------------------
    def entry(self, kind: str, name: str, key: str = "") -> Registered:
        """The registration of ``name``; an unknown name is one line listing the known ones (naming ``key``, the
        config key that chose it, where there is one)."""
        table = self.registry[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            hint = ""
            if kind == "recipes" and self.failed:
                hint = f" (plugins that failed to load: {', '.join(sorted(self.failed))})"
            what = f"{key}={name}: unknown {kind[:-1]}" if key else f"unknown {kind[:-1]} {name!r}"
            raise PluginError(f"{what}; available: {known}{hint}")
        return table[name]

    def get(self, kind: str, name: str, key: str = "") -> Any:
        return self.entry(kind, name, key).load()

    def recipe_entry(self, name: str) -> RecipeEntry:
        """Name, description and config class of a recipe, without building it."""
        return self.entry("recipes", name).obj

    def recipe(self, name: str) -> Any:
        """A new instance of recipe ``name`` (one per run: see :class:`RecipeEntry`)."""
        return self.recipe_entry(name).build()

    def model(self, name: str) -> Callable[..., Any]:
        return self.get("models", name)

    def dataset(self, name: str) -> Callable[..., Any]:
        return self.get("datasets", name)

    def loss(self, name: str) -> Callable[..., Any]:
        return self.get("losses", name)


_PLUGINS: Plugins | None = None


def get_plugins(reload: bool = False) -> Plugins:
    """The process-wide plugin set: built-ins plus installed entry points (loaded once)."""
    global _PLUGINS
    if _PLUGINS is None or reload:
        plugins = Plugins()
        plugins.add(importlib.import_module(BUILTIN_PLUGIN), "trainhub", "trainhub", _version("trainhub"))
        plugins.load_entry_points()
        _PLUGINS = plugins
    return _PLUGINS


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


def _recipe_entry(plugin: str, first: Any, ref: Any = None, config: Any = None, description: str = "") -> tuple[str, RecipeEntry]:
    """``register(MyRecipe)``, ``register(MyRecipe())`` or ``register("name", "module:Class", config=..., description=...)``."""
    if isinstance(first, str):
        if not is_ref(ref):
            raise PluginError(f"plugin {plugin!r}: register({first!r}, ...) needs a 'module:Class' reference to the recipe")
        return first, RecipeEntry(first, description, ref, config)
    name = getattr(first, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin!r} registered a recipe without a name")
    return name, RecipeEntry(name, description or getattr(first, "description", ""), first)

