"""Plain record classes for the worker's cold-start path: what ``@dataclass`` gave, without its cost.

``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__`` (and
for frozen ones ``__setattr__``, ``__delattr__``, ``__hash__``) as source text
and compiles it with ``exec`` when the class is defined: 0.3-5 ms a class, 24 ms
for the 18 on the worker's import path on a 2-core AMD EPYC at load ~2, 16-17 %
of the worker's import time (``bench/import_profile.py``, issue 19). These
bases give the same behaviour from ``__slots__``, written once:

* :class:`Record`: equality (same class, same field values) and a repr listing
  the fields; mutable, unhashable (as ``@dataclass`` with ``eq=True``);
* :class:`Frozen`: the same, immutable (assignment and deletion raise
  ``AttributeError``, as ``@dataclass(frozen=True)``'s ``FrozenInstanceError``
  does) and hashable; ``__init__`` sets fields with ``object.__setattr__``, and
  :meth:`Frozen._replace` is ``dataclasses.replace``.

The fields are the class's ``__slots__``, in order; a subclass writes its own
typed ``__init__`` (so type checkers see the signature). Fields named in
``_repr_hidden`` are left out of the repr (secrets).

Standard library only; imports nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

_F = TypeVar("_F", bound="Frozen")


class _Fields:
    """What both kinds share: the fields are ``__slots__``; equality, repr over them."""

    __slots__: ClassVar[tuple[str, ...]] = ()
    _repr_hidden: ClassVar[frozenset[str]] = frozenset()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        hidden = self._repr_hidden
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__slots__ if name not in hidden
        )
        return f"{type(self).__qualname__}({shown})"


class Record(_Fields):
    """A mutable record: value equality and a repr over its ``__slots__``."""

    __slots__: ClassVar[tuple[str, ...]] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable: as @dataclass(eq=True)


class Frozen(_Fields):
    """An immutable record: value equality, hash and repr over its ``__slots__``."""

    __slots__: ClassVar[tuple[str, ...]] = ()

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle: through __init__
        return (_construct, (type(self), self._asdict()))

    def _asdict(self) -> dict[str, Any]:
        """Field name -> value (not recursive)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def _replace(self: _F, **changes: Any) -> _F:
        """A new instance with ``changes`` applied, through ``__init__`` (so checked again);
        TypeError for a name that is not a field."""
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        return type(self)(**{**self._asdict(), **changes})


def _construct(cls: type[_F], fields: dict[str, Any]) -> _F:
    return cls(**fields)
