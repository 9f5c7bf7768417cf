"""Hamming K-NN on neural codes: ours (packed bits, popcount) vs scikit-learn's brute force.

The issue's scale: 50,000 reference codes of 1,024 bits (about MNIST's 48k training set with a
1,024-unit code), queried by 10,000 codes (MNIST's test set), k = 9. scikit-learn's
``KNeighborsClassifier(metric="hamming", algorithm="brute")`` runs on a subset of the queries
against the same 50,000 codes, and its time is scaled to all queries. Prints the times, the
ratio and how often the two predictions agree (they may break distance ties differently).
Run on one thread (``OMP_NUM_THREADS=1``) to compare like with like.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import timed
from sklearn.neighbors import KNeighborsClassifier

from analysis import hamming_knn, pack_codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=int, default=50_000, help="reference codes")
    p.add_argument("--test", type=int, default=10_000, help="query codes")
    p.add_argument("--bits", type=int, default=1_024, help="code length")
    p.add_argument("--k", type=int, default=9)
    p.add_argument(
        "--sklearn-queries",
        type=int,
        default=500,
        help="queries timed with scikit-learn (its time is scaled to --test)",
    )
    args = p.parse_args()

    rng = np.random.default_rng(0)
    # codes with class structure: each class flips 10% of the bits of its own prototype
    n_classes = 10
    prototypes = rng.random((n_classes, args.bits)) < 0.5
    y_train = rng.integers(0, n_classes, args.train)
    y_test = rng.integers(0, n_classes, args.test)

    def sample(y: np.ndarray) -> np.ndarray:
        return prototypes[y] ^ (rng.random((len(y), args.bits)) < 0.1)

    bits_train, bits_test = sample(y_train), sample(y_test)
    train, test = pack_codes(bits_train), pack_codes(bits_test)
    print(f"{args.train} reference codes and {args.test} queries of {args.bits} bits, k = {args.k}")

    ours, t_ours = timed(lambda: hamming_knn(train, y_train, test, args.k, progress=False))
    print(
        f"ours:         {t_ours:7.2f} s for all {args.test} queries "
        f"({1e3 * t_ours / args.test:.3f} ms a query); accuracy {np.mean(ours == y_test):.3f}"
    )

    m = min(args.sklearn_queries, args.test)
    knn = KNeighborsClassifier(n_neighbors=args.k, metric="hamming", algorithm="brute")
    _, t_fit = timed(lambda: knn.fit(bits_train, y_train))
    theirs, t_sk = timed(lambda: knn.predict(bits_test[:m]))
    scaled = t_fit + t_sk * args.test / m
    print(
        f"scikit-learn: {t_sk:7.2f} s for {m} queries (+ fit {t_fit:.2f} s); "
        f"scaled to {args.test} queries: {scaled:.1f} s"
    )
    print(
        f"ratio scikit-learn / ours: {scaled / t_ours:.1f}x; predictions agree on "
        f"{np.mean(theirs == ours[:m]):.4f} of the {m} common queries"
    )


if __name__ == "__main__":
    main()
