"""Convert a torchvision model and your own nn.Module from Python, inspect the plan, save and reload.

Run: python examples/convert_your_model.py
"""

import tempfile

import torch
import torchvision
from torch import nn

import lowrank_tool as lr

# 1. A torchvision model: Tucker-2 for k×k convs, SVD for 1×1 convs, the stem stays dense.
resnet = lr.convert(torchvision.models.resnet50(num_classes=10), rank=0.3)
t = lr.summary(resnet).totals()
print(
    f"resnet50 @ rank 0.3: {100 * t['params_ratio']:.1f}% of the parameters, {100 * t['macs_ratio']:.1f}% of the MACs"
)


# 2. Your own model, with per-layer control by fully qualified name or regex.
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(128, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


net = lr.convert(Net(), rank=0.5, layer_rank={"features.5": 16}, input_size=(3, 32, 32))
for layer in lr.summary(net).layers:
    print(f"{layer.name:12s} {layer.format:8s} ranks={layer.ranks} {layer.reason or ''}")

# 3. Save (plan.json + model.safetensors) and load; a custom model needs a dense instance to replay onto.
with tempfile.TemporaryDirectory() as tmp:
    lr.save(net, f"{tmp}/net")
    again = lr.load(f"{tmp}/net", model=Net())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.eval()(x), net.eval()(x))
    print("reloaded: identical outputs")
