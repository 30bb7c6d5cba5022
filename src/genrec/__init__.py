"""genrec: Generative Recommenders (HSTU) — jagged data, fused attention, training, inference.

    import genrec
    run = genrec.train(genrec.preset("hstu"), "runs/demo")          # or genrec train on the command line
    model = genrec.load("runs/demo")
    items, scores = model.recommend([[12, 7, 44]], k=10, timestamps=[[100, 3600, 7200]])
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use, so that `import genrec` (and the CLI's start) does not load torch's models
    if name == "train":  # the package, which is callable (see genrec/train/__init__.py)
        import genrec.train
        return genrec.train
    if name in ("load", "TrainedRun"):
        from genrec import api
        return getattr(api, name)
    if name in ("Config", "preset"):
        from genrec import config
        return getattr(config, name)
    raise AttributeError(f"module 'genrec' has no attribute {name!r}")
