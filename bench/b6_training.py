"""B6: ``batchml.training.train`` on synthetic reviews: a baseline and every text candidate
(keras_nbow, sklearn_text, sklearn_text_nb) fitted in parallel threads, evaluated, gated and
recorded. Wall time per candidate comes from the run's metrics ('<name>.seconds'); the total
is the wall time of the ``train()`` call. Each repetition is a fresh child process.
"""

from __future__ import annotations

import shutil

from .common import Context, Figure, child, figure, summary


def run(ctx: Context) -> list[Figure]:
    n_train, n_valid = ctx.sizes["b6_rows"]
    totals: list[float] = []
    per: dict[str, list[float]] = {}
    tagged = []
    for rep in range(ctx.sizes["b6_reps"]):
        target = ctx.tmp / "b6" / f"rep{rep}"
        ans, res = child("train", {"dir": str(target), "n_train": n_train, "n_valid": n_valid},
                         timeout_s=3600)
        shutil.rmtree(target, ignore_errors=True)
        if ans["errors"]:
            raise RuntimeError(f"candidates failed: {ans['errors']}")
        totals.append(ans["total_s"])
        tagged.append(ans["tagged"])
        for name, secs in ans["seconds"].items():
            per.setdefault(name, []).append(float(secs))
        ctx.log(f"  B6 rep {rep + 1}: total {ans['total_s']:.1f} s; "
                + ", ".join(f"{k} {v:.1f} s" for k, v in ans["seconds"].items())
                + f"; winner {ans['winner']} tagged={ans['tagged']}; process peak "
                  f"{res.maxrss_bytes / 2**20:,.0f} MB")
    figs = [figure("B6", "total", f"train(): baseline + 3 text candidates, {n_train:,} train "
                   f"/ {n_valid:,} valid rows", totals, "s", target="<= 60 s",
                   met=summary(totals)["median"] <= 60,
                   notes=f"tagged in {sum(tagged)}/{len(tagged)} runs; candidates fit in "
                         "parallel threads")]
    for name, secs in per.items():
        figs.append(figure("B6", f"candidate.{name}", f"candidate {name} (fit + evaluate)",
                           secs, "s"))
    return figs
