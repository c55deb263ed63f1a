#!/usr/bin/env python3
"""PyTorch reference figures for EfficientNet-Lite0/1/2, which torchvision does not have.

Runs ../shared/bench/torch_reference.py unchanged (same protocol, same JSON lines) with timm's
`tf_efficientnet_lite0/1/2` registered under torchvision's model namespace as `efficientnet_lite0/1/2`,
the names deeptune's benchmark uses. timm's "tf_" variants are the PyTorch ports of TensorFlow's
Lite models that the published checkpoints load into: TensorFlow "SAME" padding (a padding op before
the stride-2 convolutions), ReLU6, no squeeze-excite, BatchNorm eps 1e-3 — the same graph as
deeptune's `efficientnet_lite0`.

Set-up:  /path/to/venv-torch/bin/pip install timm
Use:     venv-torch/bin/python tools/bench/torch_reference_lite.py --models efficientnet_lite0 --sizes 224,112
         (all other flags are torch_reference.py's; --reference PATH if ../shared/bench is elsewhere)
"""
import importlib.util
import os
import sys

import timm
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFERENCE = os.path.join(HERE, "..", "..", "..", "shared", "bench", "torch_reference.py")


def load_reference(argv):
    path = DEFAULT_REFERENCE
    if "--reference" in argv:
        i = argv.index("--reference")
        path = argv[i + 1]
        del argv[i:i + 2]
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register_lite_models():
    for variant in ("lite0", "lite1", "lite2"):
        def build(weights=None, _variant=variant):
            assert weights is None, "benchmarks use random initialisation"
            return timm.create_model(f"tf_efficientnet_{_variant}", pretrained=False, num_classes=1000)
        setattr(torchvision.models, f"efficientnet_{variant}", build)


if __name__ == "__main__":
    reference = load_reference(sys.argv)
    register_lite_models()
    if "--models" not in sys.argv:
        sys.argv += ["--models", "efficientnet_lite0"]
    reference.main()
