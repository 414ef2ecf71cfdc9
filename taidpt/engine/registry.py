"""Name -> object registries (Dassl's ``Registry`` shape) with aliases."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

class Registry:
    """Maps names (and aliases) to classes or functions.

    >>> TRAINERS = Registry("TRAINER")
    >>> @TRAINERS.register(aliases=("Old_name",))
    ... class New: ...
    >>> TRAINERS.get("Old_name") is New
    True
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._objects: Dict[str, Any] = {}
        self._aliases: Dict[str, str] = {}

    def _add(self, name: str, obj: Any, aliases: Iterable[str]) -> None:
        for key in (name, *aliases):
            if key in self._objects or key in self._aliases:
                raise KeyError(f"{key!r} is already registered in the {self.name} registry")
        self._objects[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def register(self, obj: Any = None, *, name: Optional[str] = None,
                 aliases: Iterable[str] = ()) -> Any:
        """Register ``obj`` under ``name`` (default: its ``__name__``); usable as a decorator."""
        aliases = tuple(aliases)
        if obj is None:
            def decorator(target: Any) -> Any:
                self._add(name or target.__name__, target, aliases)
                return target
            return decorator
        self._add(name or obj.__name__, obj, aliases)
        return obj

    def canonical_name(self, name: str) -> str:
        """Resolve an alias to the registered name; raises ``KeyError`` listing the choices."""
        if name in self._objects:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise KeyError(
            f"{name!r} is not a registered {self.name}. Registered: {', '.join(self.registered_names())}"
            + (f"; aliases: {', '.join(sorted(self._aliases))}" if self._aliases else "")
        )

    def get(self, name: str) -> Any:
        return self._objects[self.canonical_name(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._objects or name in self._aliases

    def registered_names(self) -> List[str]:
        return sorted(self._objects)

    def aliases(self) -> Dict[str, str]:
        return dict(self._aliases)


TRAINER_REGISTRY = Registry("TRAINER")
EVALUATOR_REGISTRY = Registry("EVALUATOR")
DATASET_REGISTRY = Registry("DATASET")
