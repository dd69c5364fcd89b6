"""``ctx.metadata``: small JSON values a run shows about itself while it runs (progress,
the current phase, counts), read by ``get_run``, ``rung runs show`` and the HTTP API
(docs/metadata.md).

Durable without a write of its own per change. Every attempt starts from the metadata
the run was triggered with and replays the body's changes in order, as it replays
everything else: a read in the body sees what it saw the first time. What observers
see is written with writes the run makes anyway: the lease renewals of its heartbeat
(every ``heartbeat_interval``) and, when the metadata changed since, one write as
the attempt ends (before it waits, retries, completes or fails). A change made while
the body replays is not written on its own: the stored value is newer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rung._util import serde
from rung.errors import InvalidMetadata, UsageError

#: The most bytes of JSON a run's metadata takes (all keys together).
MAX_METADATA_BYTES = 16 * 1024
#: The longest key.
MAX_KEY_CHARS = 128


def check_metadata(values: object, what: str) -> str | None:
    """``metadata=`` given at a trigger, as its stored JSON (None for none); ``what``
    names it in errors ("trigger metadata").

    Raises:
        InvalidMetadata: not a mapping of string keys to JSON values, or too large."""
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise InvalidMetadata(
            f"{what} must be a mapping of names to JSON values, got {type(values).__name__}"
        )
    encoded = {_key(key, what): _value(value, key, what) for key, value in values.items()}
    return _checked(encoded, what) if encoded else None


def _key(key: object, what: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise InvalidMetadata(
            f"{what} key {key!r:.60} is not a name: keys are non-empty strings of at most "
            f"{MAX_KEY_CHARS} characters"
        )
    return key


def _value(value: object, key: str, what: str) -> str:
    try:
        return serde.dumps(value, f"{what} {key!r}")
    except serde.NotSerializable as exc:
        raise InvalidMetadata(str(exc)) from None
    except ValueError:  # larger than a step result may be: far past metadata's limit
        raise InvalidMetadata(_too_large(what, MAX_METADATA_BYTES + 1)) from None


def _checked(encoded: Mapping[str, str], what: str) -> str:
    text = _join(encoded)
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadata(_too_large(what, size))
    return text


def _too_large(what: str, size: int) -> str:
    return (
        f"{what} would be {'over ' if size == MAX_METADATA_BYTES + 1 else ''}{size:,} bytes "
        f"of JSON; a run keeps at most {MAX_METADATA_BYTES:,} bytes of metadata. Keep "
        "metadata to small values (progress, a phase, counts) and put large data in a "
        "step's result"
    )


def _join(encoded: Mapping[str, str]) -> str:
    """The JSON object of already-encoded values, keys in sorted order."""
    parts = (f"{json.dumps(key, ensure_ascii=False)}:{encoded[key]}" for key in sorted(encoded))
    return "{" + ",".join(parts) + "}"


class MetadataState:
    """One attempt's metadata, shared by the body, its branches and the heartbeat
    (thread-safe). ``initial``: as triggered (stored JSON, or None); ``stored``: what
    observers see now (the run item's current metadata JSON, or None)."""

    def __init__(self, initial: str | None, stored: str | None) -> None:
        self._lock = threading.Lock()
        start = json.loads(initial) if initial else {}
        self._encoded = {
            key: json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            for key, value in start.items()
        }
        self._written = stored if stored is not None else (initial or "{}")
        #: the last change was made while the body replayed (the stored value is newer)
        self._behind = False

    def change(
        self, updates: Mapping[str, object], removals: tuple[str, ...], replaying: bool
    ) -> None:
        what = "ctx.metadata"

        encoded = {_key(key, what): _value(value, key, what) for key, value in updates.items()}
        for key in removals:
            _key(key, what)
        with self._lock:
            proposed = {**self._encoded, **encoded}
            for key in removals:
                proposed.pop(key, None)
            _checked(proposed, what)  # refused whole: nothing changes
            self._encoded = proposed
            self._behind = replaying

    def get(self, key: str) -> Any:
        with self._lock:
            text = self._encoded[key]
        return json.loads(text)  # a copy: changing it changes nothing stored

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._encoded)

    def pending(self, *, ending: bool) -> str | None:
        """The JSON to write now, or None: unchanged since the last write, or (unless
        the attempt is ``ending``) last changed while replaying."""
        with self._lock:
            if self._behind and not ending:
                return None
            text = _join(self._encoded)
            return None if text == self._written else text

    def written(self, text: str) -> None:
        with self._lock:
            self._written = text


class Metadata(Mapping[str, Any]):
    """``ctx.metadata``: small JSON values about the run, for the people and systems
    watching it (docs/metadata.md). A read-only mapping with ``set``, ``update`` and
    ``delete``; values come back as their JSON form (a model as a dict), copied.

    At most 16 KiB of JSON in all; keys are strings of up to 128 characters. A change
    that would break either rule raises ``InvalidMetadata`` and changes nothing.

    Example:
        >>> ctx.metadata.set("progress", 0.4)
        >>> ctx.metadata.update(phase="enrich", done=40, total=100)
        >>> ctx.metadata.get("phase")
        'enrich'
    """

    def __init__(
        self,
        state: MetadataState,
        replaying: Callable[[], bool],
        refusal: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._state = state
        self._replaying = replaying
        self._refusal = refusal

    def set(self, key: str, value: Any) -> None:
        """Set one value (any JSON value, or what pydantic can turn into one)."""
        self._change({key: value}, ())

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set several values at once, as ``dict.update`` does."""
        self._change({**(values or {}), **more}, ())

    def delete(self, *keys: str) -> None:
        """Remove these keys (a missing key is no error)."""
        self._change({}, keys)

    def _change(self, updates: Mapping[str, Any], removals: tuple[str, ...]) -> None:
        where = self._refusal()
        if where is not None:
            raise UsageError(
                f"ctx.metadata cannot be changed {where}: that code does not run again when "
                "the body replays, so every attempt would lose the change. Change metadata "
                "in the task body, before or after the step (after ctx.map returns, for a "
                "count of its items); docs/metadata.md"
            )
        self._state.change(updates, removals, self._replaying())

    def __getitem__(self, key: str) -> Any:
        return self._state.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.keys())

    def __len__(self) -> int:
        return len(self._state.keys())

    def __repr__(self) -> str:
        return f"Metadata({dict(self)!r})"
