"""Training loops (SFT and RL), composed from the layers above; checkpoints and metrics logging.

`tirl.train` is also the function `tirl.api.train` (`tirl train` from Python): once this package is imported,
Python binds `tirl.train` to it, so the package is made callable and calls that function. Nothing else
about the package changes (`tirl.train.rl` and the rest import as before).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204 (tirl.api.train's signature)
        from tirl.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
