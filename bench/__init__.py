"""batchml benchmarks: ``python -m bench.run [--quick] [--only B1,B4] [--out FILE]``.

See ``bench/run.py`` for what each benchmark measures; results land in
``bench/results/latest.json``.
"""
