"""An :class:`App`: a web application a job serves on one of its ports."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union


class App:
    """A web application served by a job; ``dstack status`` shows its URL while the job runs.

    Args:
        name: what to call it, e.g. ``"tensorboard"``.
        port_index: which of the job's ports it listens on (``JOB_PORT_<port_index>``).
        url_path: the path of its page, e.g. ``"/lab"``.
        url_query_params: query parameters of its page, e.g. ``{"token": "..."}``.
        app_name: early dstack's name of ``name`` (give one of the two).

    Early dstack's order, ``App(port_index, app_name, url_path, url_query_params)``, works too:
    ``App(0, "tensorboard")`` is ``App("tensorboard", 0)`` (a number first is a port index).
    """

    def __init__(self, name: Union[str, int, None] = None, port_index: Union[int, str, None] = None,
                 url_path: str = "", url_query_params: Optional[Dict[str, str]] = None,
                 app_name: Optional[str] = None) -> None:
        if isinstance(name, int) and not isinstance(name, bool):  # early order: (port_index, app_name, ...)
            name, port_index = port_index, name
        if app_name is not None:
            if name is not None and name != app_name:
                raise ValueError(f"App(name={name!r}, app_name={app_name!r}): app_name is the older name of "
                                 "name and the two differ; give name only")
            name = app_name
        port_index = 0 if port_index is None else port_index
        if not isinstance(name, str) or not name:
            raise ValueError("App(name=...) must be a non-empty string")
        if not isinstance(port_index, int) or isinstance(port_index, bool) or port_index < 0:
            raise ValueError(f"App(port_index=...) must be a whole number >= 0, not {port_index!r}")
        self.name = name
        self.port_index = port_index
        self.url_path = url_path if not url_path or url_path.startswith("/") else "/" + url_path
        self.url_query_params = {str(k): str(v) for k, v in (url_query_params or {}).items()}

    def to_dict(self) -> Dict[str, Any]:
        """The wire form."""
        return {"name": self.name, "port_index": self.port_index, "url_path": self.url_path,
                "url_query_params": self.url_query_params}

    def __repr__(self) -> str:
        return f"App(name={self.name!r}, port_index={self.port_index!r})"
