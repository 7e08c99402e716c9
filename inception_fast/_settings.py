"""A process-wide setting with a thread-local override stack: the shape shared by the backend
switch (`ops.use_backend`) and the path switch (`layers.use_fused`)."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable


class Setting:
    def __init__(self, default: Any, validate: Callable[[Any], Any] = lambda v: v):
        self._default = validate(default)
        self._validate = validate
        self._local = threading.local()

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def set(self, value: Any) -> None:
        """Set the process-wide value (what applies outside any `use` block)."""
        self._default = self._validate(value)

    def get(self) -> Any:
        stack = self._stack()
        return stack[-1] if stack else self._default

    @contextlib.contextmanager
    def use(self, value: Any):
        """Override the value in this thread for the duration of the block."""
        stack = self._stack()
        stack.append(self._validate(value))
        try:
            yield
        finally:
            stack.pop()
