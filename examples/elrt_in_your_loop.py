"""Add ELRT to a plain PyTorch training loop: convert once, add the orthogonality penalty to the loss.

The two lines that matter are marked `# ELRT`. Everything else is an ordinary loop on the embedded
`digits` dataset (scikit-learn's handwritten digits), so this runs anywhere in about half a minute:

    python examples/elrt_in_your_loop.py
"""

import torch
from torch import nn

import lowrank_tool as lr
from lowrank_tool.data import build_loaders

torch.manual_seed(0)
train_loader, val_loader, info = build_loaders("digits", batch_size=64, image_size=16)

model = lr.build_model("resnet20", num_classes=info.num_classes)
model = lr.convert(model, rank=0.5, input_size=(3, 16, 16))  # ELRT: low-rank Tucker-2 layers from initialisation
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
criterion = nn.CrossEntropyLoss()

for epoch in range(5):
    model.train()
    for images, labels in train_loader:
        loss = criterion(model(images), labels)
        loss = loss + lr.orthogonality_penalty(model, kind="so", weight=0.1)  # ELRT: soft orthogonality of the factors
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val_loader)
    print(
        f"epoch {epoch + 1}: val top-1 {100 * correct / info.val_size:.1f}%  "
        f"penalty {lr.orthogonality_penalty(model).item():.4f}"
    )

t = lr.summary(model).totals()
print(f"{100 * t['params_ratio']:.0f}% of the dense parameters, {100 * t['macs_ratio']:.0f}% of the MACs")
