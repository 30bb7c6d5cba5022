"""Training: losses, the retrieval and ranking trainers, checkpoints of runs, torch.distributed code.

`genrec.train(config, out_dir)` is the Python API's training call (genrec.api.train). Python binds the name
genrec.train to this package as soon as one of its modules is imported, so the package itself answers that
call: a module class with __call__, rather than an API name that works only until then.
"""

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from genrec.api import train
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
