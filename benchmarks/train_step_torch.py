"""The PyTorch peer of `configs/coco.py`'s train step, for `benchmarks/train_step.py --peer` (same run).

    python benchmarks/train_step_torch.py [--batches 8,16] [--dtypes bfloat16,float32] [--repeats 5] [--no-compile]
        [--height 353 --width 257 --depth 101]

What a strong PyTorch user would write for the same network and loss: torchvision's ResNet-101 with dilation in
layer3 and layer4 (output stride 8), a 1x1 head on layer4 and one on layer3 (the config's auxiliary head), both
upsampled bilinearly (aligned corners) to the crop, disk targets and offsets computed on the device from the
keypoints, L = 4 L_h + 1 L_o per head (sigmoid cross-entropy over labelled keypoints' heatmaps; Huber,
threshold 1 px, on the offset error in units of R over disk pixels), AdamW with decoupled weight decay on kernels;
channels-last, bfloat16 autocast when the dtype is bfloat16 (TF32 matmuls for float32), `torch.compile` unless
`--no-compile`. Random uint8 crops and keypoints, the same shapes as the JAX benchmark's.

Prints one JSON document (rows per dtype and batch: seconds, crops per second, the device) on the last line of
standard output, which `train_step.py --peer` reads. Needs `torch` and `torchvision` (not hvpose's dependencies).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F
import torchvision


class KeypointNet(torch.nn.Module):
    """ResNet (dilated to output stride 8) + 1x1 heads on layer4 and layer3, maps upsampled to the crop."""

    def __init__(self, depth: int, keypoints: int):
        super().__init__()
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None,
                                                               replace_stride_with_dilation=[False, True, True])
        self.stem = torch.nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1,
                                        resnet.layer2)
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        self.head = torch.nn.Conv2d(2048, 3 * keypoints, 1)
        self.aux_head = torch.nn.Conv2d(1024, 3 * keypoints, 1)
        mean = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)  # caffe: BGR minus the ImageNet mean
        self.register_buffer("mean", mean)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = crops.shape[-2:]
        x = crops.flip(1).float() - self.mean  # uint8 RGB -> caffe BGR, as hvpose's "caffe" preprocessing
        block3 = self.layer3(self.stem(x))
        block4 = self.layer4(block3)
        up = lambda maps: F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=True)  # noqa: E731
        return up(self.head(block4)), up(self.aux_head(block3))


def keypoint_loss(maps: torch.Tensor, keypoints: torch.Tensor, radius: float, delta: float = 1.0) -> torch.Tensor:
    """4 L_h + L_o of one head's maps (B, 3K, H, W) against keypoints (B, K, 3), as `hvpose.targets` defines it
    with `unlabelled="ignore"` and offsets in units of R."""
    batch, channels, height, width = maps.shape
    k = channels // 3
    logits, offset_x, offset_y = maps[:, :k], maps[:, k:2 * k], maps[:, 2 * k:]
    ys = torch.arange(height, device=maps.device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=maps.device, dtype=torch.float32).view(1, 1, 1, width)
    dx = keypoints[:, :, 0, None, None] - xs
    dy = keypoints[:, :, 1, None, None] - ys
    labelled = (keypoints[:, :, 2] > 0)[:, :, None, None]
    disk = labelled & (dx * dx + dy * dy <= radius * radius)
    cross_entropy = F.binary_cross_entropy_with_logits(logits.float(), disk.float(), reduction="none")
    heatmap_loss = (cross_entropy * labelled).sum() / (labelled.sum() * height * width).clamp(min=1)
    ex, ey = (offset_x.float() - dx) / radius, (offset_y.float() - dy) / radius
    squared = ex * ex + ey * ey
    scaled_delta = delta / radius
    norm = squared.clamp(min=1e-12).sqrt()
    huber = torch.where(norm <= scaled_delta, 0.5 * squared / scaled_delta, norm - 0.5 * scaled_delta)
    offset_loss = (huber * disk).sum() / disk.sum().clamp(min=1)
    return 4.0 * heatmap_loss + offset_loss


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-4, fused=torch.cuda.is_available())


def time_steps(batch: int, dtype: str, args: argparse.Namespace, device: torch.device) -> float:
    torch.manual_seed(0)
    model = KeypointNet(args.depth, 17).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model)
    crops = torch.randint(0, 256, (batch, 3, args.height, args.width), dtype=torch.uint8, device=device)
    crops = crops.contiguous(memory_format=torch.channels_last)
    keypoints = torch.cat([torch.rand(batch, 17, 2, device=device) * torch.tensor([args.width, args.height],
                                                                                     device=device),
                           torch.randint(0, 3, (batch, 17, 1), device=device).float()], dim=-1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> torch.Tensor:
        with autocast:
            maps, aux_maps = model(crops)
        loss = keypoint_loss(maps, keypoints, args.radius) + keypoint_loss(aux_maps, keypoints, args.radius)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if args.compile:
        step = torch.compile(step)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # compile and warm up
        step()
    synchronize()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="8")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=353)
    parser.add_argument("--width", type=int, default=257)
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--radius", type=float, default=25.0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 as JAX runs it on GPUs by default
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for dtype in [d for d in args.dtypes.split(",") if d]:
        for batch in [int(b) for b in args.batches.split(",") if b]:
            seconds = time_steps(batch, dtype, args, device)
            rows.append({"framework": "pytorch", "dtype": dtype, "batch": batch, "seconds": seconds,
                         "crops_per_second": batch / seconds, "compiled": args.compile})
            print(f"pytorch {dtype} batch {batch}: {seconds:.4f} s ({batch / seconds:.2f} crops/s)",
                  file=sys.stderr, flush=True)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "device": device_name,
                      "depth": args.depth, "crop": [args.height, args.width], "rows": rows}))


if __name__ == "__main__":
    main()
