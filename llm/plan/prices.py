"""The price table (configs/plan_prices.json: dated, per chip-hour, on-demand and spot) and the
`--price` override (one number per chip-hour for every hardware choice, or another table file)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from llm.errors import UserError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "configs" / "plan_prices.json"
KINDS = ("on_demand", "spot")


@dataclasses.dataclass(frozen=True)
class Prices:
    date: str
    source: str
    currency: str
    per_chip_hour: dict[str, dict[str, float]]  # chip -> {on_demand, spot}
    path: str

    def price(self, chip: str, kind: str = "on_demand") -> float:
        entry = self.per_chip_hour.get(chip)
        if entry is None or kind not in entry:
            raise UserError(
                f"price table {self.path!r} has no {kind} price for {chip!r}; add \"{chip}\": "
                f"{{\"on_demand\": ..., \"spot\": ...}} to its per_chip_hour, or pass --price DOLLARS_PER_CHIP_HOUR"
            )
        return float(entry[kind])


def read_prices(path: str | Path = DEFAULT_PATH) -> Prices:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"price table {str(path)!r} does not exist; pass --price a number per chip-hour or a JSON file like configs/plan_prices.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"price table {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno}); fix it or pass --price") from None
    for key in ("date", "per_chip_hour"):
        if key not in data:
            raise UserError(f"price table {str(path)!r} has no {key!r}; every table needs a date and per_chip_hour prices")
    for chip, entry in data["per_chip_hour"].items():
        for kind in KINDS:
            value = entry.get(kind) if isinstance(entry, dict) else None
            if not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"price table {str(path)!r}: {chip}.{kind} is {value!r}; give a number of {data.get('currency', 'USD')} per chip-hour")
    return Prices(str(data["date"]), str(data.get("source", "")), str(data.get("currency", "USD")), data["per_chip_hour"], str(path))


def resolve_prices(price: str | None, chips: list[str]) -> Prices:
    """--price: None (the default table), a number (per chip-hour, every choice), or a table file;
    every chip in `chips` must have an entry."""
    if price is None:
        prices = read_prices()
    else:
        try:
            value = float(price)
        except ValueError:
            prices = read_prices(price)
        else:
            if value < 0:
                raise UserError(f"--price {price}: a price per chip-hour cannot be negative")
            prices = Prices("--price", "given on the command line", "USD", {c: {k: value for k in KINDS} for c in chips}, "--price")
    for chip in chips:
        prices.price(chip, "on_demand")
    return prices
