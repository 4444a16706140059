"""B1: scoring throughput of one big file, three ways, for both model flavors.

* floor: a plain script in a fresh process (pyarrow read + the model's ``predict_proba`` +
  pyarrow write). Its wall time is the floor of the CLI path; its timed loop after the model
  is loaded and warm is the floor of the service path.
* cli: ``batchml predict FILE`` end to end in a fresh process (own BATCHML_HOME whose catalog
  holds a tagged run of the model; empty ledger each repetition).
* service: the warm path, ``Worker.run_batch`` in a long-lived process with a warm ModelCache.

Plus the pure I/O floor: read the file and write one float column, and the text models'
fast path alone (:mod:`.b1_text`: rows/s of ``LinearTextModel.predict_proba`` against
scikit-learn's own pipeline).
"""

from __future__ import annotations

import shutil

from . import b1_text
from .common import Context, Figure, batchml_cli, child, figure, run_child, summary

ABS_TARGET = {"keras_nbow": (150_000, "Keras >= 150k rows/s"),
              "sklearn_text": (85_000, "sklearn (2 cores) >= 85k rows/s")}


def run(ctx: Context) -> list[Figure]:
    figures: list[Figure] = []
    models = ctx.models()
    warm_input = ctx.reviews_file(1_000, seed=3)
    for model, rows in ctx.sizes["b1_rows"].items():
        reps = ctx.sizes["b1_reps"][model]
        info = models[model]
        path = ctx.reviews_file(rows, seed=7)
        floor_wall, floor_warm, floor_cores, cli_wall, cli_cores, cli_rss = [], [], [], [], [], []
        for rep in range(reps):
            ans, res = child("floor", {"flavor": info["flavor"], "model_file": info["model_file"],
                                       "inputs": [str(path)],
                                       "out_dir": str(ctx.dir("b1", "floor"))})
            floor_wall.append(rows / res.wall_s)
            floor_warm.append(rows / ans["seconds"][0])
            floor_cores.append(ans["cpu_s"] / ans["seconds"][0])
            home, env = ctx.fresh_home(model, f"b1-{model}-cli-{rep}")
            r = run_child([*batchml_cli(), "predict", str(path)], env=env, timeout_s=7200).check()
            cli_wall.append(rows / r.wall_s)
            cli_cores.append(r.cores)
            cli_rss.append(r.maxrss_bytes)
            shutil.rmtree(home, ignore_errors=True)
            ctx.log(f"  {model} rep {rep + 1}/{reps}: floor {floor_wall[-1]:,.0f} rows/s "
                    f"(warm {floor_warm[-1]:,.0f}), cli {cli_wall[-1]:,.0f} rows/s")
        home, _ = ctx.fresh_home(model, f"b1-{model}-service")
        ans, res = child("service", {"home": str(home), "artifacts": info["artifacts"],
                                     "input": str(path), "warm_input": str(warm_input),
                                     "reps": reps}, timeout_s=7200)
        shutil.rmtree(home, ignore_errors=True)
        service = [rows / s for s in ans["seconds"]]
        service_cores = [c / s for c, s in zip(ans["cpu_s"], ans["seconds"], strict=True)]
        ctx.log(f"  {model} service: {', '.join(f'{v:,.0f}' for v in service)} rows/s")

        fw = summary(floor_wall)["median"]
        fm = summary(floor_warm)["median"]
        absolute, abs_text = ABS_TARGET[model]
        short = "keras" if model == "keras_nbow" else "sklearn"
        figures.append(figure("B1", f"floor_process.{model}",
                              f"{short} floor: plain script, fresh process, {rows:,} rows",
                              floor_wall, "rows/s",
                              notes=f"cores busy {summary(floor_cores)['median']:.2f} "
                                    "(in the timed loop)"))
        figures.append(figure("B1", f"floor_warm.{model}",
                              f"{short} floor: plain script, warm loop only", floor_warm,
                              "rows/s"))
        for key, what, samples, floor, cores in (
                ("cli", "batchml predict, fresh process", cli_wall, fw, cli_cores),
                ("service", "Worker.run_batch, warm ModelCache", service, fm, service_cores)):
            med = summary(samples)["median"]
            ok = med / floor >= 0.95 and med >= absolute
            figures.append(figure(
                "B1", f"{key}.{model}", f"{short} {what}, {rows:,} rows", samples, "rows/s",
                floor=floor, target=f"ratio >= 0.95; {abs_text}", met=ok,
                notes=f"cores busy {summary(cores)['median']:.2f}",
                extra={"peak_rss_bytes": cli_rss} if key == "cli" else {}))
    io_rows = max(ctx.sizes["b1_rows"].values())
    path = ctx.reviews_file(io_rows, seed=7)
    ans, _ = child("iofloor", {"input": str(path), "out_dir": str(ctx.dir("b1", "io")),
                               "reps": ctx.sizes["b1_io_reps"]})
    figures.append(figure("B1", "io_floor", f"I/O floor: read + write a float column, "
                          f"{io_rows:,} rows", [io_rows / s for s in ans["seconds"]], "rows/s"))
    figures.extend(b1_text.run(ctx))
    return figures
