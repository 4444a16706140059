"""B7: cold start. ``batchml predict`` of a 1,000-row file in a fresh process, end to end
(interpreter start, imports, catalog, model load, scoring, output), per model flavor.
The floor is the plain script in a fresh process on the same file.
"""

from __future__ import annotations

import shutil

from .common import Context, Figure, batchml_cli, child, figure, run_child, summary


def run(ctx: Context) -> list[Figure]:
    path = ctx.reviews_file(1_000, seed=3)
    models = ctx.models()
    figs: list[Figure] = []
    for model in ("sklearn_text", "keras_nbow"):
        info = models[model]
        walls, floors = [], []
        for rep in range(ctx.sizes["b7_reps"]):
            home, env = ctx.fresh_home(model, f"b7-{model}-{rep}")
            r = run_child([*batchml_cli(), "predict", str(path)], env=env).check()
            shutil.rmtree(home, ignore_errors=True)
            walls.append(r.wall_s)
            _, f = child("floor", {"flavor": info["flavor"], "model_file": info["model_file"],
                                   "inputs": [str(path)], "out_dir": str(ctx.dir("b7", "floor"))})
            floors.append(f.wall_s)
        ctx.log(f"  B7 {model}: {', '.join(f'{w:.2f}' for w in walls)} s "
                f"(floor {', '.join(f'{w:.2f}' for w in floors)} s)")
        med = summary(walls)["median"]
        short = "sklearn" if model == "sklearn_text" else "keras"
        figs.append(figure("B7", f"cold.{model}", f"cold start: batchml predict 1,000 rows, "
                           f"{short} model, fresh process", walls, "s",
                           floor=summary(floors)["median"], target="<= 2.5 s", met=med <= 2.5))
        figs.append(figure("B7", f"floor.{model}", f"floor: plain script, fresh process, "
                           f"{short}", floors, "s"))
    return figs
