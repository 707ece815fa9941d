"""Generates ``examples/data/transactions.csv``: a small synthetic table of card transactions.

Mixed column kinds (continuous, integer counts, binary, categorical, a column with missing
values, an id) and a labelled ~3% of anomalies, so the Quick start exercises every encoder path.
Run: ``python examples/make_example_data.py`` (deterministic; the CSV is committed).
"""

from pathlib import Path

import numpy as np
import pandas as pd

N_NORMAL, N_ANOMALOUS = 4000, 120


def normal_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    channel = rng.choice(["web", "app", "store"], size=n, p=[0.5, 0.3, 0.2])
    hour = np.clip(np.round(rng.normal(14, 4, n)), 0, 23).astype(int)
    amount = np.round(np.exp(rng.normal(3.5, 0.8, n)) * np.where(channel == "store", 1.5, 1.0), 2)
    items = 1 + rng.poisson(np.clip(amount / 40, 0.2, 6))
    account_age = np.round(rng.gamma(2.0, 400, n))
    account_age[rng.random(n) < 0.08] = np.nan  # unknown for guest checkouts
    return pd.DataFrame({
        "amount": amount,
        "hour": hour,
        "items": items,
        "channel": channel,
        "is_weekend": rng.random(n) < 2 / 7,
        "account_age_days": account_age,
        "distance_km": np.round(rng.exponential(8, n), 1),
    })


def anomalous_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    rows = normal_rows(rng, n)
    rows["amount"] = np.round(np.exp(rng.normal(6.5, 0.7, n)), 2)  # unusually large
    rows["hour"] = rng.integers(1, 5, n)  # at night
    rows["items"] = 1
    rows["distance_km"] = np.round(rng.uniform(300, 3000, n), 1)  # far from home
    return rows


def main() -> None:
    rng = np.random.default_rng(7)
    normal, anomalous = normal_rows(rng, N_NORMAL), anomalous_rows(rng, N_ANOMALOUS)
    frame = pd.concat([normal.assign(is_fraud=0), anomalous.assign(is_fraud=1)])
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame.insert(0, "transaction_id", np.arange(100_000, 100_000 + len(frame)))
    path = Path(__file__).parent / "data" / "transactions.csv"
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} rows to {path}")


if __name__ == "__main__":
    main()
