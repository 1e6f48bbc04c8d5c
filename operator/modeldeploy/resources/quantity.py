"""Kubernetes resource quantities, as far as the operator does arithmetic on them (pure).

Only halving, for the int8 build pod: its builder and the gate's Triton each get half the serving
container's CPU and memory requests, so the pod asks the scheduler for what one serving pod asks
(docs/artifacts.md).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

_SUFFIXES: Final = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY: Final = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def parse(quantity: str) -> Decimal:
    """The quantity's value in base units (cores, bytes). ValueError when it is not one."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]
    except InvalidOperation as e:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}") from e


def half(quantity: str) -> str:
    """Half of `quantity`, in its own suffix when that is exact ("4Gi" gives "2Gi"), else rounded
    up to the API server's own resolution (1 milli-unit): "1" gives "500m", "3Gi" "1610612736"."""
    match = _QUANTITY.match(quantity.strip())
    if match and "e" not in match.group(1).lower():
        number = Decimal(match.group(1)) / 2
        if number == number.to_integral_value():
            return f"{int(number)}{match.group(2) or ''}"
    milli = math.ceil(parse(quantity) * 1000 / 2)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
