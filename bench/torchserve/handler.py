"""TorchServe handler for ``bench/serve_bench.py``: decode, resize, normalise, batch, top-5.

TorchServe imports this file from the model archive and wants exactly one class defined in it.
The preprocessing is written out here, as a TorchServe user would: Pillow converts and resizes
(bilinear, as resnetkit's ``data.preprocess_image`` does), then ``(x / 255 - mean) / std`` with
the spec from the ``model.json`` packed in the archive. ``BaseHandler.initialize`` builds the
eager model from ``model.py`` and loads its state dict. TorchServe hands ``preprocess`` a whole
batch (up to ``batchSize`` requests gathered within ``maxBatchDelay``): one forward pass each.

Not TorchScript: under TorchScript's profiling executor every new batch size re-specialises
the graph, and batching makes many sizes; that cost 10x the CPU at low load in this bench.
"""

import io
import json
import os

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler


class ResNetKitBenchHandler(BaseHandler):
    """Image bytes in, ``[{"index": i, "probability": p}, ...]`` (top 5) out, per request."""

    def initialize(self, context):
        # Intra-op threads per worker: the bench sets them like every other server's.
        threads = int(os.environ.get("BENCH_TORCH_THREADS", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        super().initialize(context)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "model.json")) as fh:
            spec = json.load(fh)["preprocessing"]
        self.height, self.width = spec["size"]
        self.channels = spec["channels"]
        self.mode = "L" if self.channels == 1 else "RGB"
        self.mean = torch.tensor(spec["mean"]).view(-1, 1, 1)
        self.std = torch.tensor(spec["std"]).view(-1, 1, 1)
        self.top_k = 5

    def _pixels(self, payload):
        image = Image.open(io.BytesIO(payload)).convert(self.mode)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        flat = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return flat.view(self.height, self.width, self.channels).permute(2, 0, 1)  # (C, H, W)

    def preprocess(self, data):
        pixels = []
        for row in data:
            payload = row.get("data") or row.get("body")
            if isinstance(payload, str):
                payload = payload.encode("latin-1")
            pixels.append(self._pixels(bytes(payload)))
        batch = torch.stack(pixels).float()  # (B, C, H, W) in [0, 255]
        return (batch / 255.0 - self.mean) / self.std

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data):
        probabilities = torch.softmax(data.float(), dim=1)
        values, indices = probabilities.topk(min(self.top_k, probabilities.shape[1]), dim=1)
        return [
            [{"index": int(i), "probability": float(p)} for p, i in zip(row_p, row_i, strict=True)]
            for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
