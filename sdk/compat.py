"""Names of early dstack's SDK (2022), kept so that providers written for it run unchanged.

``from dstack import Resources, Gpu`` (and ``GpuResourceRequirements``, an even older name) give the
current classes: ``Resources`` *is* :class:`~dstack.sdk.resources.ResourceRequirements`; ``Gpu`` is
:class:`~dstack.sdk.resources.GPU` with early dstack's order of arguments, ``(count, memory, name)``
(``GPU`` takes ``(count, name, memory)``), so that ``Gpu(2, "16GB")`` still means 16 GB each.
New providers write ``ResourceRequirements`` and ``GPU``.
"""
from __future__ import annotations

from typing import Optional, Union

from .resources import GPU, ResourceRequirements

__all__ = ["Gpu", "GpuResourceRequirements", "Resources"]

#: Early dstack's name of :class:`ResourceRequirements`.
Resources = ResourceRequirements


class Gpu(GPU):
    """Early dstack's ``Gpu(count, memory, name)``: a :class:`GPU` (accepted wherever one is).

    Raises:
        ValueError: as :class:`GPU` does; when the second argument is not a size, the message says
            that it is the memory here and how to give a model.
    """

    def __init__(self, count: int = 1, memory: Union[str, int, None] = None, name: Optional[str] = None) -> None:
        try:
            super().__init__(count=count, name=name, memory=memory)
        except ValueError as e:
            if "memory" not in str(e):
                raise
            raise ValueError(f"{e}; Gpu(count, memory, name) takes the memory second, as early dstack did: "
                             f"write Gpu({count!r}, name={memory!r}) for a GPU model") from None


#: Early dstack's first name of :class:`Gpu`.
GpuResourceRequirements = Gpu
