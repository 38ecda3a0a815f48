"""The eager model TorchServe serves in ``bench/serve_bench.py``: resnetkit's own module code.

TorchServe instantiates the one class defined here without arguments, then loads the state
dict the bench wrote (keys prefixed ``net.``). The architecture comes from the ``model.json``
packed beside this file in the archive, so resnet18 and a Fashion-MNIST run use the same file;
``resnetkit.models`` (torch only, safetensors for its artifact helpers) is found through the
``PYTHONPATH`` the bench gives TorchServe: the same ``nn.Module`` that ``resnetkit serve
--backend torch`` runs.
"""

import json
import os

import torch

from resnetkit.models import create_model


class BenchModel(torch.nn.Module):
    """``create_model(arch, **kwargs)`` from ``model.json``, as ``self.net``."""

    def __init__(self):
        super().__init__()
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "model.json")) as fh:
            card = json.load(fh)
        self.net = create_model(card["arch"], **card["kwargs"])

    def forward(self, x):
        return self.net(x)
