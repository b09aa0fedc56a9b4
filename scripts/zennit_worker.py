"""Reference LRP for scripts/compare_zennit.py: the Levi-Hassner net rebuilt in PyTorch, explained with zennit.

Imports only torch, zennit and numpy, and runs in an interpreter of its own (torch is no dependency of
psyattr and never goes into the project's venv):

    python3 -m venv /work/zennit-venv && /work/zennit-venv/bin/pip install torch==2.13.0 zennit numpy

compare_zennit.py starts it as `/work/zennit-venv/bin/python scripts/zennit_worker.py ARRAYS.npz THREADS`, where
ARRAYS.npz holds the Keras weights (`weights/<layer>/<index>`, Keras layouts), the preprocessing and LRN
settings (`meta/...`), the image batches and their targets. Requests come on stdin, one JSON object a
line, and each gets one JSON line back on stdout:

    {"op": "logits", "images": KEY, "out": PATH}                 fc8 logits (N, 8) saved to PATH (.npy)
    {"op": "explain", "composite": NAME, "images": KEY, "out": PATH}   relevance (N, H, W, C) saved to PATH
    {"op": "time", "composite": NAME, "images": KEY}             {"ms": one batch's wall time}

Add "dtype": "float64" to run the net in double precision (the reference for float32 rounding).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import types
from collections import OrderedDict

import numpy as np
import torch


def stand_in_for_torchvision() -> None:
    """Let zennit import when torchvision cannot: zennit's `__init__` imports it for its ResNet canonizers only.

    PyPI's torchvision wheels are CUDA builds; beside the CPU torch wheel their `_C.so` does not load and
    `import torchvision` fails ("operator torchvision::nms does not exist"). The two ResNet block classes
    zennit imports are then replaced by empty stand-ins (nothing here is a ResNet).
    """
    try:
        import torchvision.models.resnet  # noqa: F401
        return
    except (ImportError, OSError, RuntimeError):
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
    resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    package = types.ModuleType("torchvision")
    package.models = models
    sys.modules.update({"torchvision": package, "torchvision.models": models, "torchvision.models.resnet": resnet})


stand_in_for_torchvision()
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,  # noqa: E402
                               EpsilonPlusFlat, LayerMapComposite, layer_map_base)
from zennit.rules import AlphaBeta, Epsilon, Pass, ZPlus  # noqa: E402
from zennit.types import Linear  # noqa: E402


class CaffePreprocess(torch.nn.Module):
    """RGB (N, 3, H, W) in 0..255 to Caffe's input: channels reversed to BGR, minus the BGR means."""

    def __init__(self, bgr_mean):
        super().__init__()
        self.register_buffer("mean", torch.tensor(bgr_mean, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):
        return x.flip(1) - self.mean


def build_net(arrays) -> torch.nn.Sequential:
    """The Levi-Hassner net up to the fc8 logits, with the Keras weights converted to PyTorch layouts."""
    lrn = dict(zip(("size", "alpha", "beta", "k"), arrays["meta/lrn"].tolist()))
    lrn["size"] = int(lrn["size"])
    layers = OrderedDict([
        ("data", CaffePreprocess(arrays["meta/bgr_mean"].tolist())),
        ("conv1", torch.nn.Conv2d(3, 96, 7, stride=4)), ("relu1", torch.nn.ReLU()),
        # Caffe rounds pooled sizes up: 56 -> 28 -> 14 -> 7, the windows Keras' padding="same" gives.
        ("pool1", torch.nn.MaxPool2d(3, 2, ceil_mode=True)), ("norm1", torch.nn.LocalResponseNorm(**lrn)),
        ("conv2", torch.nn.Conv2d(96, 256, 5, padding=2)), ("relu2", torch.nn.ReLU()),
        ("pool2", torch.nn.MaxPool2d(3, 2, ceil_mode=True)), ("norm2", torch.nn.LocalResponseNorm(**lrn)),
        ("conv3", torch.nn.Conv2d(256, 384, 3, padding=1)), ("relu3", torch.nn.ReLU()),
        ("pool5", torch.nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("flatten", torch.nn.Flatten()),
        ("fc6", torch.nn.Linear(18816, 512)), ("relu6", torch.nn.ReLU()),
        ("fc7", torch.nn.Linear(512, 512)), ("relu7", torch.nn.ReLU()),
        ("fc8", torch.nn.Linear(512, arrays["weights/fc8/1"].shape[0])),
    ])
    height, width, channels = arrays["meta/pool5_shape"].tolist()
    with torch.no_grad():
        for name, module in layers.items():
            if f"weights/{name}/0" not in arrays:
                continue
            kernel, bias = arrays[f"weights/{name}/0"], arrays[f"weights/{name}/1"]
            if kernel.ndim == 4:  # Keras (H, W, in, out) -> torch (out, in, H, W)
                kernel = kernel.transpose(3, 2, 0, 1)
            elif name == "fc6":  # Keras flattens pool5 as (H, W, C), torch as (C, H, W)
                kernel = kernel.reshape(height, width, channels, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
            else:  # Keras (in, out) -> torch (out, in)
                kernel = kernel.T
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32)))
            module.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return torch.nn.Sequential(layers).eval()


def build_composite(name: str, arrays):
    """The zennit composite that does what psyattr's composite `name` does.

    zennit has no rule for LocalResponseNorm (it would take its gradient): LRN gets `Pass`, the identity
    psyattr applies. ReLU gets zennit's usual `Pass`; max-pooling takes the gradient in both.
    """
    eps = float(arrays["meta/stabilizer"])
    extra = [(torch.nn.LocalResponseNorm, Pass())]
    options = {"epsilon": eps, "stabilizer": eps, "layer_map": extra}
    everywhere = {"epsilon": Epsilon(eps), "alpha2beta1": AlphaBeta(2.0, 1.0, stabilizer=eps),
                  "alpha1beta0": ZPlus(stabilizer=eps)}
    if name in everywhere:
        return LayerMapComposite(extra + layer_map_base(eps) + [(Linear, everywhere[name])])
    if name == "epsilon_gamma_box":
        # Bounds in the space conv1 sees (after preprocessing), per BGR channel.
        mean = torch.tensor(arrays["meta/bgr_mean"], dtype=torch.float32).view(1, 3, 1, 1)
        return EpsilonGammaBox(low=-mean, high=255.0 - mean, **options)
    presets = {"epsilon_plus": EpsilonPlus, "epsilon_alpha2beta1": EpsilonAlpha2Beta1,
               "epsilon_plus_flat": EpsilonPlusFlat, "epsilon_alpha2beta1_flat": EpsilonAlpha2Beta1Flat}
    if name not in presets:
        raise ValueError(f"no zennit equivalent of composite {name!r}")
    return presets[name](**options)


def explain(net, composite, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Relevance (N, H, W, C) of each image's target logit, starting from the logit's value."""
    onehot = torch.nn.functional.one_hot(targets, net.fc8.out_features).to(images.dtype)
    with Gradient(model=net, composite=composite) as attributor:
        _, relevance = attributor(images.clone(), lambda out: onehot * out.detach())
    return relevance.permute(0, 2, 3, 1).numpy()


def answer(request: dict, nets: dict, composites: dict, arrays, batches: dict, targets: torch.Tensor) -> dict:
    """Carry out one request (see the module docstring)."""
    dtype = request.get("dtype", "float32")
    net, images = nets[dtype], batches[request["images"]].to(getattr(torch, dtype))
    if request["op"] == "logits":
        with torch.no_grad():
            np.save(request["out"], net(images).numpy())
        return {"out": request["out"]}
    name = request["composite"]
    if name not in composites:
        composites[name] = build_composite(name, arrays)
    start = time.perf_counter()
    relevance = explain(net, composites[name], images, targets)
    reply = {"ms": (time.perf_counter() - start) * 1000}
    if request["op"] == "explain":
        np.save(request["out"], relevance)
        reply["out"] = request["out"]
    return reply


def main() -> None:
    torch.set_num_threads(int(sys.argv[2]))
    arrays = dict(np.load(sys.argv[1]))
    net = build_net(arrays)
    # float64 copy: the rounding-free reference that tells float32 noise from real differences.
    nets = {"float32": net, "float64": copy.deepcopy(net).double()}
    batches = {key.removeprefix("images/"): torch.from_numpy(arrays[key].transpose(0, 3, 1, 2).copy())
               for key in arrays if key.startswith("images/")}
    targets = torch.from_numpy(arrays["targets"].astype(np.int64))
    composites = {}
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line), nets, composites, arrays, batches, targets)
        except Exception as err:  # reported to the caller, which raises it
            reply = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
