"""Peak GPU memory of deepcluster-train at ImageNet scale, computed (no GPU needed).

    python bench/train_memory.py                 # AlexNet and VGG16, width 1.0, batch 256

The network is built on PyTorch's meta device (shapes, no data) with the paper's settings
(224 px, Sobel, k = 10,000); one training step at batch 256 is run there while a
saved-tensors hook adds up the bytes autograd keeps for the backward pass (each storage once).
The peak of a training step is then
    weights + gradients + SGD momentum (body only; the top layer's SGD has none)
    + activations kept for backward + twice the largest activation (the gradient being formed
      and the one it is formed from) + the batch (uint8 and its float copy),
and the clustering step (the network stays resident, no activations) needs the features where
the trainer puts them: on the GPU only when they take at most a quarter of its free memory,
otherwise in pinned host memory (float16), streamed through the GPU in two chunks of
``STREAM_CHUNK_BYTES`` (dc_kernels) while PCA (a d x d float64 covariance) and k-means
(centroids, sums) run. 1 GiB is added for the CUDA context and cuDNN's workspace.
"""

import argparse

import torch
import torch.nn.functional as F

from deepcluster.models import build_model

GIB = 2**30
IMAGENET = 1_281_167
CONTEXT = 1 * GIB
STREAM_CHUNK_BYTES = 256 << 20  # dc_kernels' host-streaming chunk (two live on the GPU)


def step_bytes(arch: str, width: float, k: int, batch: int, size: int,
               amp: bool) -> dict[str, float]:
    """Bytes of one training step; ``amp``: activations in float16 (--amp), weights fp32."""
    with torch.device("meta"):
        model = build_model(arch, k, sobel=True, in_channels=3, image_size=size, width=width)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    top = sum(p.numel() * p.element_size() for p in model.top_layer.parameters())
    dtype = torch.float16 if amp else torch.float32
    model.to(dtype)
    saved: dict[int, int] = {}
    largest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        storage = t.untyped_storage()
        saved[storage._cdata] = storage.nbytes()
        largest = max(largest, storage.nbytes())
        return t

    x = torch.empty(batch, 3, size, size, device="meta", dtype=dtype)
    y = torch.zeros(batch, dtype=torch.int64, device="meta")
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    batch_bytes = batch * 3 * size * size * (1 + 4)
    train = (weights * 2 + (weights - top) + sum(saved.values()) + 2 * largest + batch_bytes
             + CONTEXT)
    return {"weights": weights, "activations": sum(saved.values()), "largest": largest,
            "train_peak": train, "feature_dim": model.feature_dim,
            "resident": weights + (weights - top) + CONTEXT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--k", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=IMAGENET)
    parser.add_argument("--gpu-gib", type=float, default=24.0)
    args = parser.parse_args()
    print(f"{args.images} images, batch {args.batch_size}, 224 px, k {args.k}, "
          f"a {args.gpu_gib:g} GiB card:")
    for arch, amp in (("alexnet", False), ("vgg16", False), ("vgg16", True)):
        m = step_bytes(arch, 1.0, args.k, args.batch_size, 224, amp)
        features = args.images * m["feature_dim"] * 4
        on_device = features <= (args.gpu_gib * GIB - m["resident"]) / 4
        d, pca = m["feature_dim"], min(256, m["feature_dim"])
        cluster = m["resident"] + d * d * 8 + args.k * pca * 4 * 3 + (
            features + args.images * pca * 4 if on_device else 2 * STREAM_CHUNK_BYTES)
        peak = max(m["train_peak"], cluster)
        where = "GPU" if on_device else f"pinned host, float16 {features / 2 / GIB:.1f} GiB"
        print(f"{arch + (' --amp' if amp else ''):<14} weights {m['weights'] / GIB:.2f} GiB | "
              f"activations kept for "
              f"backward {m['activations'] / GIB:.2f} GiB (largest {m['largest'] / GIB:.2f}) | "
              f"training step peak {m['train_peak'] / GIB:.2f} GiB | features "
              f"{features / GIB:.1f} GiB fp32 -> "
              f"{where}"
              f" | clustering peak {cluster / GIB:.2f} GiB | peak {peak / GIB:.2f} GiB: "
              f"{'fits' if peak <= args.gpu_gib * GIB else 'does NOT fit'}")


if __name__ == "__main__":
    main()
