"""The embedded default: a synthetic catalog with a realistic long tail, made from a seed.

Items belong to a topic and get text drawn from that topic's vocabulary.
Popularity is Zipf-like. Users carry sparse topic mixtures and pick items
mostly inside their topics, so an item's text says who wants it, tail items
included. A few items are released late, so a time split has cold items.

Titles name a brand, a product line, an attribute and a noun. The product line
is drawn from its own random stream, so titles stay unique without moving the
stream that makes the interactions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ltray.config import SyntheticConfig
from ltray.data.schema import Dataset

# (category, nouns, attributes): enough words that texts inside a topic differ.
TOPICS: list[tuple[str, list[str], list[str]]] = [
    ("hiking gear", ["backpack", "tent", "trail boots", "trekking poles", "headlamp", "sleeping bag"],
     ["waterproof", "ultralight", "alpine", "breathable", "rugged", "compact"]),
    ("kitchen", ["chef knife", "cast iron skillet", "dutch oven", "cutting board", "saucepan", "whisk"],
     ["stainless", "nonstick", "forged", "enameled", "dishwasher safe", "professional"]),
    ("jazz records", ["vinyl LP", "live album", "saxophone session", "trio recording", "big band set", "bebop reissue"],
     ["smoky", "improvised", "swinging", "cool", "modal", "late night"]),
    ("video games", ["RPG", "shooter", "platformer", "strategy game", "racing game", "open world adventure"],
     ["multiplayer", "co-op", "pixel art", "story rich", "competitive", "retro"]),
    ("skincare", ["moisturiser", "serum", "sunscreen", "cleanser", "face mask", "toner"],
     ["hydrating", "fragrance free", "vitamin C", "gentle", "SPF 50", "hyaluronic"]),
    ("gardening", ["seed kit", "pruning shears", "raised bed", "compost bin", "watering can", "trellis"],
     ["organic", "heirloom", "perennial", "drought tolerant", "native", "greenhouse"]),
    ("crime novels", ["detective novel", "noir thriller", "heist story", "police procedural", "true crime book",
                      "mystery series"],
     ["gritty", "twisty", "hardboiled", "suspenseful", "dark", "page turning"]),
    ("baby care", ["stroller", "car seat", "baby monitor", "diaper bag", "crib mattress", "bottle set"],
     ["newborn", "foldable", "hypoallergenic", "safety tested", "soft", "convertible"]),
    ("cycling", ["road bike", "bike helmet", "cycling jersey", "bike light", "saddle", "clipless pedals"],
     ["aero", "carbon", "reflective", "gravel", "endurance", "lightweight"]),
    ("coffee", ["espresso machine", "burr grinder", "pour over kit", "coffee beans", "milk frother", "cold brew jar"],
     ["single origin", "dark roast", "barista grade", "arabica", "manual", "specialty"]),
    ("classical music", ["symphony recording", "piano sonata", "string quartet", "opera box set", "violin concerto",
                         "choral album"],
     ["baroque", "romantic", "orchestral", "chamber", "remastered", "virtuoso"]),
    ("fitness", ["yoga mat", "dumbbells", "kettlebell", "resistance bands", "foam roller", "jump rope"],
     ["adjustable", "non slip", "home gym", "high intensity", "core", "strength"]),
    ("photography", ["mirrorless camera", "prime lens", "tripod", "camera bag", "flash", "ND filter"],
     ["full frame", "wide angle", "portrait", "stabilised", "weather sealed", "macro"]),
    ("science fiction", ["space opera", "cyberpunk novel", "time travel story", "alien first contact book",
                         "dystopian saga", "robot anthology"],
     ["galactic", "futuristic", "hard science", "interstellar", "post apocalyptic", "mind bending"]),
    ("pet supplies", ["dog bed", "cat tree", "leash", "aquarium filter", "chew toy", "pet carrier"],
     ["durable", "orthopedic", "washable", "interactive", "calming", "grain free"]),
    ("home office", ["standing desk", "ergonomic chair", "monitor arm", "mechanical keyboard", "desk lamp", "webcam"],
     ["height adjustable", "wireless", "dimmable", "lumbar support", "quiet", "4K"]),
    ("hip hop", ["rap album", "mixtape", "beat tape", "freestyle single", "producer compilation", "boom bap record"],
     ["lyrical", "trap", "old school", "underground", "bass heavy", "conscious"]),
    ("cooking books", ["baking cookbook", "vegan cookbook", "italian recipes", "bread guide", "spice primer",
                       "weeknight dinners"],
     ["plant based", "homemade", "seasonal", "easy", "regional", "illustrated"]),
    ("travel", ["carry on suitcase", "travel pillow", "packing cubes", "passport wallet", "universal adapter",
                "rolling duffel"],
     ["hardshell", "TSA approved", "expandable", "anti theft", "compact", "weekender"]),
    ("board games", ["strategy board game", "party game", "card game", "cooperative game", "puzzle", "dice game"],
     ["family", "tabletop", "deck building", "two player", "quick", "worker placement"]),
    ("documentaries", ["nature documentary", "history series", "science film", "true story film", "wildlife series",
                       "space documentary"],
     ["narrated", "award winning", "ocean", "archival", "investigative", "epic"]),
    ("audio", ["headphones", "bluetooth speaker", "turntable", "soundbar", "earbuds", "amplifier"],
     ["noise cancelling", "hi fi", "wireless", "studio", "bass boost", "portable"]),
    ("knitting", ["merino yarn", "knitting needles", "crochet hook set", "pattern book", "wool roving", "yarn bowl"],
     ["chunky", "hand dyed", "bamboo", "circular", "beginner", "fair isle"]),
    ("horror films", ["slasher film", "ghost story", "zombie movie", "haunted house film", "creature feature",
                      "psychological horror"],
     ["terrifying", "cult classic", "gory", "atmospheric", "supernatural", "found footage"]),
]
_BRANDS = ["Northwind", "Acme", "Blue Fjord", "Kestrel", "Lumen", "Orchid", "Pioneer", "Quill", "Riverstone",
           "Summit", "Tandem", "Vireo", "Wren", "Zephyr", "Ember", "Harbor"]
# Product-line names: with brand, attribute and noun they make every title distinct.
_LINES = ["Aurora", "Basalt", "Cascade", "Cedar", "Comet", "Crest", "Drift", "Echo", "Fable", "Falcon",
          "Fern", "Flint", "Glacier", "Granite", "Halo", "Horizon", "Juniper", "Lark", "Meadow", "Meridian",
          "Nova", "Onyx", "Prism", "Quartz", "Ridge", "Sable", "Sage", "Sierra", "Solstice", "Spruce",
          "Tide", "Timber", "Trail", "Tundra", "Umber", "Vale", "Vista", "Willow", "Yarrow", "Zenith"]
# Generation marks once a (brand, attribute, noun) triple has used every line name.
_MARKS = ["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"]
# Spawn key of the title stream: independent of the interaction stream of the same seed.
_TITLE_STREAM = 1
# Bumped whenever the same config makes other data (2: product-line titles): it is part of the
# data stage's fingerprint, so a run made by an older generator redoes its data stage.
GENERATOR_VERSION = 2
DAY = 86_400


def _item_words(rng: np.random.Generator, topic: int) -> tuple[str, str, str, str, str]:
    """(category, brand, a1, a2, noun) for one item; the draws on `rng` are the historical ones."""
    category, nouns, attrs = TOPICS[topic % len(TOPICS)]
    noun = nouns[rng.integers(len(nouns))]
    picked = rng.choice(len(attrs), size=2, replace=False)
    a1, a2 = attrs[picked[0]], attrs[picked[1]]
    brand = _BRANDS[rng.integers(len(_BRANDS))]
    return category, brand, a1, a2, noun


def _titles_and_texts(words: list[tuple[str, str, str, str, str]], seed: int) -> tuple[list[str], list[str]]:
    """Distinct titles: each (category, brand, a1, noun) takes line names in its own random order."""
    gen = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_TITLE_STREAM,)))
    orders: dict[tuple[str, str, str, str], np.ndarray] = {}
    used: dict[tuple[str, str, str, str], int] = {}
    titles, texts = [], []
    for category, brand, a1, a2, noun in words:
        key = (category, brand, a1, noun)
        if key not in orders:
            orders[key] = gen.permutation(len(_LINES))
        k = used.get(key, 0)
        used[key] = k + 1
        line = _LINES[orders[key][k % len(_LINES)]]
        gen_no = k // len(_LINES)
        if gen_no:
            # Past the line names: a later generation, numbered past the marks if it must be.
            line += " " + (_MARKS[gen_no - 1] if gen_no <= len(_MARKS) else str(gen_no + 1))
        title = f"{brand} {line} {a1} {noun}"
        titles.append(title)
        texts.append(f"{title}. Category: {category}. A {a2}, {a1} {noun} for {category} fans.")
    return titles, texts


def generate(cfg: SyntheticConfig) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    n_items, n_users = cfg.n_items, cfg.n_users
    topics = rng.integers(cfg.n_topics, size=n_items)
    # Zipf popularity over a random order, so popularity is independent of topic.
    rank = rng.permutation(n_items) + 1
    pop = rank.astype(np.float64) ** -cfg.zipf_exponent
    titles, texts = _titles_and_texts([_item_words(rng, int(t)) for t in topics], cfg.seed)
    # 3% of items are released in the last 10% of the time window: cold in a time split.
    horizon = 365 * DAY
    t0 = 1_600_000_000
    release = np.zeros(n_items, dtype=np.int64)
    late = rng.random(n_items) < 0.03
    release[late] = rng.integers(int(0.9 * horizon), horizon, size=int(late.sum()))

    by_topic = [np.flatnonzero(topics == t) for t in range(cfg.n_topics)]
    topic_cdf = [np.cumsum(pop[ix]) / pop[ix].sum() for ix in by_topic]
    global_cdf = np.cumsum(pop) / pop.sum()

    users, items_out, ts_out = [], [], []
    counts = np.maximum(5, rng.poisson(cfg.interactions_per_user, size=n_users))
    for u in range(n_users):
        mix = rng.dirichlet(np.full(cfg.n_topics, 0.15))
        n = int(counts[u])
        draws = 3 * n  # oversample, then drop repeats and not-yet-released items
        times = np.sort(rng.integers(0, horizon, size=draws))
        cand = np.searchsorted(global_cdf, rng.random(draws) * global_cdf[-1])
        by_text = rng.random(draws) < cfg.topic_affinity
        tps = rng.choice(cfg.n_topics, size=draws, p=mix)
        for tp in np.unique(tps[by_text]):
            sel = by_text & (tps == tp)
            if len(by_topic[tp]):
                pos = np.searchsorted(topic_cdf[tp], rng.random(int(sel.sum())) * topic_cdf[tp][-1])
                cand[sel] = by_topic[tp][np.minimum(pos, len(by_topic[tp]) - 1)]
        cand = np.minimum(cand, n_items - 1)
        ok = release[cand] <= times
        _, first = np.unique(cand, return_index=True)
        keep = np.zeros(draws, dtype=bool)
        keep[first] = True
        keep &= ok
        idx = np.flatnonzero(keep)
        if len(idx) > n:
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        users.extend([u] * len(idx))
        items_out.extend(cand[idx].tolist())
        ts_out.extend((t0 + times[idx]).tolist())
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "text": list(texts),
        "title": list(titles),
        "topic": [TOPICS[t % len(TOPICS)][0] for t in topics],
    })
    inter = pd.DataFrame({
        "user_id": [f"u{u}" for u in users],
        "item_id": [f"i{i}" for i in items_out],
        "ts": np.asarray(ts_out, dtype=np.int64),
        "weight": np.ones(len(users), dtype=np.float32),
    })
    return Dataset("synthetic", items, inter,
                   {"synthetic": cfg.model_dump(), "generator_version": GENERATOR_VERSION})
