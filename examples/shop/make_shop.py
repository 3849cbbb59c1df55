"""Writes the small outdoor-shop data set of the README's bring-your-own example (run once; the CSVs
are committed): items.csv (sku, title, genres, description) and interactions.csv (customer, sku, when,
qty). Stdlib only, seeded, so a re-run writes the same files.

It is small (48 items, 40 customers, 447 interactions) yet above ltray's minimum sizes: every
customer buys from one or two favourite activities, most buy 10 or more distinct items (the run's
test split, then the ranker's validation split, each take a customer's last purchases), popularity
is skewed so there is a head and a long tail, and four items are never bought (cold).
"""

from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 7

# activity -> (products, words for the descriptions)
ACTIVITIES = {
    "hiking": (["trail boots", "trekking poles", "day pack", "rain shell", "gaiters", "map case",
                "merino socks", "sun hat"], "waterproof, alpine, grippy, ridge, switchback"),
    "running": (["road shoes", "trail shoes", "hydration vest", "running cap", "split shorts",
                 "reflective vest", "energy gels", "compression socks"], "light, breathable, tempo, cushioned"),
    "climbing": (["climbing shoes", "chalk bag", "harness", "belay device", "quickdraw set",
                  "crash pad", "climbing rope", "helmet"], "bouldering, crag, sticky rubber, sport route"),
    "camping": (["two-person tent", "sleeping bag", "camp stove", "headlamp", "sleeping mat",
                 "camp mug", "water filter", "folding chair"], "backcountry, warm, compact, campsite"),
    "cycling": (["gravel tyres", "bike lights", "saddle bag", "cycling gloves", "bike pump",
                 "frame bag", "bib shorts", "cycling glasses"], "gravel, commute, puncture, road ride"),
    "swimming": (["swim goggles", "swim cap", "pull buoy", "open-water wetsuit", "kickboard",
                  "fins", "tow float", "swim towel"], "pool, open water, drills, chlorine-proof"),
}
BRANDS = ["Kestrel", "Fjell", "Nordic Pine", "Ridgeway", "Ossa", "Tarn", "Cirrus", "Lumen"]


def make_items(rng: random.Random) -> list[dict[str, str]]:
    items, n = [], 0
    for activity, (products, words) in ACTIVITIES.items():
        for j, product in enumerate(products):
            n += 1
            brand = BRANDS[(n * 3 + j) % len(BRANDS)]
            sku = "A12" if (activity, j) == ("hiking", 0) else f"{activity[0].upper()}{n:02d}"
            picked = ", ".join(rng.sample(words.split(", "), 2))
            items.append({"sku": sku, "title": f"{brand} {product}", "genres": activity,
                          "description": f"{product} for {activity}: {picked}"})
    assert len({i["title"] for i in items}) == len(items), "titles must be distinct"
    return items


def make_interactions(rng: random.Random, items: list[dict[str, str]]) -> list[dict[str, str]]:
    by_activity: dict[str, list[dict[str, str]]] = {}
    for it in items:
        by_activity.setdefault(it["genres"], []).append(it)
    # The last product of each activity is never bought in the first four activities: cold items.
    cold = {by_activity[a][-1]["sku"] for a in list(ACTIVITIES)[:4]}
    # Zipf-like popularity within an activity: the first products sell most.
    weight = {it["sku"]: 0.0 if it["sku"] in cold else 1.0 / (1 + k) ** 1.1
              for a in by_activity for k, it in enumerate(by_activity[a])}
    start = datetime(2024, 1, 8, 9, 0, tzinfo=timezone.utc)
    rows = []
    for c in range(1, 41):
        favourites = rng.sample(list(ACTIVITIES), 2 if c % 3 else 1)
        pool = [it for a in favourites for it in by_activity[a] if weight[it["sku"]] > 0]
        n = min(len(pool), rng.randint(8, 16))
        bought = []
        while len(bought) < n:  # weighted draws without replacement
            it = rng.choices(pool, weights=[weight[p["sku"]] for p in pool])[0]
            if it not in bought:
                bought.append(it)
        # An occasional item outside the favourites: the long tail's other half.
        if rng.random() < 0.5:
            bought.append(rng.choice([it for it in items if it["sku"] not in cold and it not in bought]))
        t = start + timedelta(days=rng.randint(0, 30), hours=rng.randint(0, 10))
        for it in bought:
            t += timedelta(days=rng.randint(1, 9), hours=rng.randint(0, 12), minutes=rng.randint(0, 59))
            rows.append({"customer": f"c{c}", "sku": it["sku"], "when": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "qty": str(rng.choice([1, 1, 1, 2, 3]))})
    rows.sort(key=lambda r: r["when"])
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    rng = random.Random(SEED)
    items = make_items(rng)
    inter = make_interactions(rng, items)
    write(HERE / "items.csv", items)
    write(HERE / "interactions.csv", inter)
    print(f"{len(items)} items, {len({r['customer'] for r in inter})} customers, {len(inter)} interactions "
          f"-> {HERE}")


if __name__ == "__main__":
    main()
