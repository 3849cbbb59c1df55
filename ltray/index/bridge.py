"""Text -> CF bridge: ridge regression from item text vectors to ALS item factors.

Fitted on head items, where ALS factors are reliable; ``predict`` then gives tail and cold items a
CF-like vector that is scored against user factors exactly like a head item's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_unit(a) * _unit(b), axis=1)


def _recall_at_k(pred: np.ndarray, true_rows: np.ndarray, y_all: np.ndarray, k: int) -> float:
    """Share of rows whose true item is among the k items of y_all nearest (cosine) to the prediction."""
    sims = _unit(pred) @ _unit(y_all).T
    k = min(k, y_all.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return float(np.mean((top == true_rows[:, None]).any(axis=1)))


class TextToCFBridge:
    """Closed-form ridge ``Y ~ X W + b`` with an unpenalised intercept."""

    def __init__(self, l2: float = 1.0):
        if l2 < 0:
            raise ValueError("l2 must be >= 0")
        self.l2 = float(l2)
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.y_mean: np.ndarray | None = None  # mean training factor: the no-text control

    def fit(self, X: np.ndarray, Y: np.ndarray) -> TextToCFBridge:
        X = np.asarray(X, np.float64)
        Y = np.asarray(Y, np.float64)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ValueError(f"X (n, d) and Y (n, f) must have the same n, got {X.shape} and {Y.shape}")
        if len(X) == 0:
            raise ValueError("no rows to fit the bridge on")
        mx, my = X.mean(axis=0), Y.mean(axis=0)
        xc, yc = X - mx, Y - my
        a = xc.T @ xc + self.l2 * np.eye(X.shape[1])
        # lstsq copes with a singular system when l2 == 0 and n < d
        self.W = np.linalg.lstsq(a, xc.T @ yc, rcond=None)[0].astype(np.float32)
        self.b = (my - mx @ self.W).astype(np.float32)
        self.y_mean = my.astype(np.float32)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("TextToCFBridge is not fitted")
        return (np.asarray(X, np.float32) @ self.W + self.b).astype(np.float32)

    def evaluate(self, X_heldout: np.ndarray, Y_heldout: np.ndarray, Y_all_items: np.ndarray, k: int = 10,
                 heldout_rows=None, seed: int = 0) -> dict[str, float]:
        """Quality on held-out (head) items, against two controls measured on the same rows.

        - ``cosine``: mean cosine between predicted and true factors;
        - ``recall_at_k``: share of held-out items whose true row in ``Y_all_items`` is among the k
          rows nearest (cosine) to the predicted factor; ``heldout_rows`` gives those rows (default:
          found as the row of ``Y_all_items`` identical to each held-out factor);
        - ``random_projection_*``: the same for an untrained Gaussian projection text -> factor space;
        - ``mean_factor_cosine``: predicting the mean training factor for every item (no text at all).
        """
        X = np.asarray(X_heldout, np.float32)
        Y = np.asarray(Y_heldout, np.float32)
        y_all = np.asarray(Y_all_items, np.float32)
        if heldout_rows is None:
            heldout_rows = np.argmax(_unit(Y) @ _unit(y_all).T, axis=1)
        rows = np.asarray(heldout_rows, np.int64)
        pred = self.predict(X)
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((X.shape[1], Y.shape[1])).astype(np.float32) / np.sqrt(X.shape[1])
        rand = X @ proj
        mean = np.broadcast_to(self.y_mean, Y.shape)
        return {
            "cosine": float(_row_cosine(pred, Y).mean()),
            "recall_at_k": _recall_at_k(pred, rows, y_all, k),
            "random_projection_cosine": float(_row_cosine(rand, Y).mean()),
            "random_projection_recall_at_k": _recall_at_k(rand, rows, y_all, k),
            "mean_factor_cosine": float(_row_cosine(mean, Y).mean()),
            "k": int(k),
            "n_heldout": len(X),
        }

    def save(self, path: str | Path) -> Path:
        if self.W is None:
            raise RuntimeError("TextToCFBridge is not fitted")
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, W=self.W, b=self.b, y_mean=self.y_mean, l2=np.array(self.l2))
        return p

    @classmethod
    def load(cls, path: str | Path) -> TextToCFBridge:
        with np.load(path, allow_pickle=False) as z:
            obj = cls(float(z["l2"]))
            obj.W, obj.b = z["W"].astype(np.float32), z["b"].astype(np.float32)
            obj.y_mean = z["y_mean"].astype(np.float32)
        return obj
