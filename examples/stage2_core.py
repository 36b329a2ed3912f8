"""The stage-2 core end to end on one crop: network, targets, loss, Hough voting and decoding.

    python examples/stage2_core.py [--depth 101] [--output-stride 8]

Builds the paper's keypoint network (atrous ResNet-101, output stride 8, 353x257 crops, randomly initialised:
pretrained weights need `hvpose.pretrained`), runs it on a crop, scores it against the targets of an embedded
standing-person pose with the G-RMI loss, then shows that voting the ideal heatmaps and offsets of that pose
(what a perfectly trained network would output) decodes every keypoint back to its pixel.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hvpose import keypoints as kp
from hvpose.models.pose_net import PoseNet
from hvpose.ops.voting import decode, hough_vote
from hvpose.targets import make_targets, total_loss

CROP = (353, 257)
RADIUS = 25.0
# A frontal standing person in crop pixels (x, y): COCO-17 order; the person's left is on the image right.
POSE = np.array([
    [128, 60], [136, 52], [120, 52], [146, 58], [110, 58], [158, 100], [98, 100], [170, 150], [86, 150],
    [176, 196], [80, 196], [148, 200], [108, 200], [150, 262], [106, 262], [152, 322], [104, 322]], np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--output-stride", type=int, default=8)
    args = parser.parse_args()

    keypoints = jnp.asarray(np.concatenate([POSE, np.full((kp.NUM_KEYPOINTS, 1), 2.0)], axis=1)[None])
    crop = jax.random.uniform(jax.random.key(0), (1, *CROP, 3), minval=-1.0, maxval=1.0)
    model = PoseNet(depth=args.depth, output_stride=args.output_stride, aux_head=True)
    start = time.perf_counter()
    variables = jax.jit(model.init)(jax.random.key(1), crop)
    forward = jax.jit(lambda v, x: model.apply(v, x))
    outputs = jax.block_until_ready(forward(variables, crop))
    parameters = sum(x.size for x in jax.tree.leaves(variables["params"]))
    print(f"ResNet-{args.depth} OS{args.output_stride} PoseNet: {parameters / 1e6:.1f}M parameters, "
          f"init + first forward {time.perf_counter() - start:.1f} s")
    for name, value in outputs.items():
        print(f"  {name:20} {tuple(value.shape)}")

    terms = total_loss(outputs, keypoints, RADIUS)
    print("loss of the untrained network: " + ", ".join(f"{k} {float(v):.4f}" for k, v in terms.items()))

    targets = make_targets(keypoints, CROP, RADIUS)
    ideal = {"heatmap_logits": jnp.where(targets["heatmaps"] > 0, 20.0, -20.0), "offsets": targets["offsets"]}
    print(f"loss of ideal outputs: {float(total_loss(ideal, keypoints, RADIUS)['loss']):.2e}")
    scores = hough_vote(targets["heatmaps"], targets["offsets"], RADIUS)
    decoded = np.asarray(decode(scores))[0]
    print(f"{'keypoint':15} {'true (x, y)':>12} {'decoded (x, y)':>15} {'score':>6}")
    for name, true, (x, y, score) in zip(kp.NAMES, POSE, decoded):
        print(f"{name:15} {true[0]:6.0f}{true[1]:6.0f} {x:9.0f}{y:6.0f} {score:6.3f}")
    error = np.abs(decoded[:, :2] - POSE).max()
    print(f"max decoding error: {error:.1f} px")
    if error > 0:
        raise SystemExit("voting did not recover the pose")


if __name__ == "__main__":
    main()
