"""Unit tests of the trainer's pieces: sampler, top layer, models, data readers, checkpoints."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from deepcluster import data
from deepcluster.checkpoint import CheckpointError, load_checkpoint, rng_state, set_rng_state
from deepcluster.models import build_model
from deepcluster.sampler import UniformLabelSampler
from deepcluster.train import reset_top_layer


def test_sampler_draws_each_nonempty_cluster_equally():
    # Clusters of sizes 1, 3, 50, 146 and two empty ones (ids 4 and 7).
    labels = np.repeat([0, 1, 2, 3], [1, 3, 50, 146])
    labels = np.where(labels == 3, 5, labels)
    labels = np.random.default_rng(0).permutation(labels)
    n = len(labels)
    sampler = UniformLabelSampler(torch.from_numpy(labels), n, seed=3)
    pairs = list(sampler)
    assert len(pairs) == len(sampler) == n
    index = np.array([p[0] for p in pairs])
    drawn = np.bincount(labels[index], minlength=8)
    assert drawn[[4, 6, 7]].tolist() == [0, 0, 0]
    assert sorted(drawn[[0, 1, 2, 5]].tolist()) == [50, 50, 50, 50]
    # A cluster as large as its share is drawn without replacement, a smaller one with.
    for cluster in (2, 5):
        members = index[labels[index] == cluster]
        assert len(np.unique(members)) == len(members)
    assert set(index[labels[index] == 0]) == {int(np.flatnonzero(labels == 0)[0])}


def test_sampler_remainder_and_seeds():
    labels = np.arange(7) % 3  # clusters of 3, 2, 2 points
    for seed in range(5):
        sampler = UniformLabelSampler(labels, 11, seed=seed)
        drawn = np.bincount(labels[sampler.indices], minlength=3)
        assert drawn.sum() == 11 and drawn.max() - drawn.min() <= 1
    a, b = UniformLabelSampler(labels, 11, seed=1), UniformLabelSampler(labels, 11, seed=1)
    assert list(a) == list(b)
    assert list(a) != list(UniformLabelSampler(labels, 11, seed=2))
    assert len(set(a.seeds.tolist())) == 11  # one augmentation seed per draw


def test_sampler_spreads_draws_over_a_cluster():
    # One big cluster of 1000 points and one of 10, 2000 draws: the big one is drawn 1000 times
    # without replacement, i.e. every member exactly once.
    labels = np.repeat([0, 1], [1000, 10])
    sampler = UniformLabelSampler(labels, 2000, seed=0)
    big = sampler.indices[labels[sampler.indices] == 0]
    assert np.array_equal(np.sort(big), np.arange(1000))
    small = sampler.indices[labels[sampler.indices] == 1]
    assert len(small) == 1000 and np.all(np.bincount(small - 1000, minlength=10) > 50)


def test_top_layer_recreated_and_optimizers_kept_apart():
    model = build_model("alexnet", 5, image_size=16, width=0.125, in_channels=1)
    body = [p for n, p in model.named_parameters() if not n.startswith("top_layer.")
            and p.requires_grad]
    optimizer = torch.optim.SGD(body, lr=0.1, momentum=0.9)
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in body]
    old = model.top_layer
    top = reset_top_layer(model, 7, seed=11, device=torch.device("cpu"))
    assert model.top_layer is top and top is not old and top.weight.shape == (7, model.feature_dim)
    assert torch.equal(top.bias, torch.zeros(7))
    # N(0, 0.01): 7 x 512 draws, the sample std is within 5% of 0.01.
    assert abs(top.weight.std().item() - 0.01) < 5e-4 and abs(top.weight.mean().item()) < 5e-4
    assert not any(p is q for p in top.parameters() for q in body)
    again = reset_top_layer(model, 7, seed=11, device=torch.device("cpu"))
    assert torch.equal(again.weight, top.weight)
    assert not torch.equal(reset_top_layer(model, 7, seed=12, device="cpu").weight, top.weight)
    # Re-creating the top layer leaves the body's momentum untouched.
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], b)
               for p, b in zip(body, buffers, strict=True))


@pytest.mark.parametrize("arch,size,sobel,channels", [
    ("alexnet", 16, True, 3), ("alexnet", 128, False, 1), ("vgg16", 32, True, 1),
    ("resnet18", 8, False, 3), ("resnet50", 8, True, 1)])
def test_models_build_and_embed(arch, size, sobel, channels):
    width = {"alexnet": 0.125, "vgg16": 0.0625}.get(arch, 1.0)
    model = build_model(arch, 4, sobel=sobel, in_channels=channels, image_size=size, width=width)
    model.eval()
    x = torch.randn(2, channels, size, size)
    assert model(x).shape == (2, 4)
    emb = model.embed(x)
    assert emb.shape == (2, model.feature_dim)
    assert model.conv1.in_channels == (2 if sobel else channels)
    assert model.feature_dim == {"resnet18": 512, "resnet50": 2048}.get(arch, 4096 * width)
    if arch == "alexnet":
        # The embedding is the classifier's output before its final ReLU.
        assert (emb < 0).any()
        assert torch.equal(torch.relu(emb), model.classifier(model.body(x)))


def test_small_stems_follow_the_image_size():
    small = build_model("alexnet", 3, image_size=32, width=0.125)
    big = build_model("alexnet", 3, image_size=224, width=0.125)
    assert small.conv1.kernel_size == (5, 5) and small.conv1.stride == (2, 2)
    assert big.conv1.kernel_size == (11, 11) and big.conv1.stride == (4, 4)
    # The paper's AlexNet geometry: a 6 x 6 map of conv5 channels into fc6.
    assert big.classifier[1].in_features == 32 * 6 * 6 and big.feature_dim == 512
    small_resnet = build_model("resnet18", 3, image_size=32)
    assert small_resnet.conv1.kernel_size == (3, 3)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in small_resnet.features.modules())
    assert build_model("resnet18", 3, image_size=224).conv1.kernel_size == (7, 7)


def test_classifier_init_keeps_the_paper_gain_at_any_width():
    # Width 1.0 is the paper's N(0, 0.01); at width w the std is 0.01 / sqrt(w).
    torch.manual_seed(0)
    for width, std in ((1.0, 0.01), (0.25, 0.02)):
        model = build_model("alexnet", 3, image_size=32, width=width)
        fc2 = model.classifier[4]
        assert abs(fc2.weight.std().item() - std) < 0.03 * std
        assert abs(model.top_layer.weight.std().item() - 0.01) < 5e-4


def test_crop_scale_follows_the_image_size():
    # Auto (0): the paper's 0.08 for full-size inputs, milder for upscaled small images.
    assert data.TrainTransform(224).min_scale == 0.08
    assert data.TrainTransform(32).min_scale == data.default_min_crop_scale(32) == 0.6
    assert data.TrainTransform(32, min_scale=0.2).min_scale == 0.2


def test_sobel_front_computes_gradients():
    model = build_model("alexnet", 3, sobel=True, in_channels=3, image_size=16, width=0.125)
    ramp = torch.arange(16.0).repeat(16, 1)  # intensity grows along x by 1 per pixel
    out = model.sobel(ramp.expand(1, 3, 16, 16))
    # Interior: horizontal Sobel of a unit ramp is -(1+2+1)*2 = -8, vertical is 0.
    assert torch.allclose(out[0, 0, 1:-1, 1:-1], torch.full((14, 14), -8.0))
    assert torch.allclose(out[0, 1, 1:-1, 1:-1], torch.zeros(14, 14), atol=1e-5)
    assert not any(p.requires_grad for p in model.sobel.parameters())


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("lenet", 3)
    with pytest.raises(ValueError, match="at least 32 px"):
        build_model("vgg16", 3, image_size=16)
    with pytest.raises(ValueError, match="too small"):
        build_model("alexnet", 3, image_size=8)
    with pytest.raises(ValueError, match="only supported"):
        build_model("resnet18", 3, width=0.5)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(
        struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_fashion_mnist_reader_and_missing_message(tmp_path, monkeypatch):
    with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
        data._fashion_mnist(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    got = data._fashion_mnist(tmp_path)
    assert got.images.shape == (5, 1, 28, 28) and torch.equal(got.images[:, 0],
                                                              torch.from_numpy(images))
    assert got.labels.tolist() == [3, 1, 4, 1, 5] and got.native_size == 28
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBBIII", 0, 8, 3, 5, 28, 28) + images.tobytes()[:100])
    with pytest.raises(data.DataError, match="truncated"):
        data._fashion_mnist(tmp_path)


def test_npz_reader(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 10, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=rgb, y_train=np.array([0, 1, 0, 1]))
    got = data.load_images(str(tmp_path / "rgb.npz"))
    assert got.images.shape == (4, 3, 10, 12) and got.channels == 3
    assert torch.equal(got.images[2].permute(1, 2, 0), torch.from_numpy(rgb[2]))
    np.savez(tmp_path / "gray.npz", x_train=rgb[..., 0])
    assert data.load_images(str(tmp_path / "gray.npz")).labels is None
    np.savez(tmp_path / "float.npz", x_train=rgb.astype(np.float32))
    with pytest.raises(data.DataError, match="uint8"):
        data.load_images(str(tmp_path / "float.npz"))
    np.savez(tmp_path / "nox.npz", images=rgb)
    with pytest.raises(data.DataError, match="no 'x_train'"):
        data.load_images(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "badlabels.npz", x_train=rgb, y_train=np.zeros(3, dtype=int))
    with pytest.raises(data.DataError, match="labels must be 4 integers"):
        data.load_images(str(tmp_path / "badlabels.npz"))


def test_eval_transform_keeps_the_originals_margin():
    # Resize(256) + CenterCrop(224) at 224 px, the same 224/256 margin at other sizes.
    assert data.eval_resize(224) == 256 and data.eval_resize(32) == 37
    x = torch.zeros(3, 300, 400, dtype=torch.uint8)
    x[:, 150, 200] = 255  # the centre pixel stays, the border does not
    x[:, 0, :] = 255
    out = data.eval_transform(224)(x)
    assert out.shape == (3, 224, 224) and out[:, 0].max() == 0 and out.max() > 0


def test_train_transform_is_a_function_of_its_seed():
    x = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    t = data.TrainTransform(16, min_scale=0.2)
    a, b = t(x, 123), t(x, 123)
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    outs = [t(x, s) for s in range(20)]
    assert len({o.sum().item() for o in outs}) > 10
    # With scale 1 and the aspect ratio of a square, the crop is the whole image: a resize,
    # possibly mirrored.
    square = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)
    whole = data.TrainTransform(16, min_scale=1.0)
    ref = TF.resize(square, [16], antialias=True)
    for seed in range(10):
        got = whole(square, seed)
        if got.shape == ref.shape and (torch.equal(got, ref) or torch.equal(got, ref.flip(-1))):
            continue
        # Aspect ratios != 1 at full area do not fit; torchvision falls back to the whole image.
        pytest.fail(f"seed {seed}: the full-scale crop is not the whole image")


def test_train_transform_without_flip_crops_the_same_and_never_mirrors():
    x = torch.randint(0, 256, (1, 20, 30), dtype=torch.uint8)
    flips, keeps = data.TrainTransform(16, min_scale=0.3), data.TrainTransform(16, 0.3, False)
    mirrored = 0
    for seed in range(40):
        a, b = flips(x, seed), keeps(x, seed)
        # The flip is drawn either way, so the crop of a seed is the same with and without it.
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
        mirrored += not torch.equal(a, b)
    assert 5 < mirrored < 35  # about half of the seeds mirror when flipping is on


def test_jitter_scales_brightness_and_contrast_within_its_range():
    x = torch.randint(40, 200, (1, 16, 16), dtype=torch.uint8)
    plain = data.TrainTransform(16, min_scale=1.0, flip=False)
    jittered = data.TrainTransform(16, min_scale=1.0, flip=False, jitter=0.5)
    means = []
    for seed in range(30):
        a, b = plain(x, seed).float(), jittered(x, seed).float()
        assert torch.equal(jittered(x, seed), jittered(x, seed))
        means.append(b.mean() / a.mean())
        # The brightness factor scales the mean by at most 1 +- 0.5 (contrast keeps it, up to
        # uint8 rounding and clipping at 255).
        assert 0.45 < means[-1] < 1.55
    assert max(means) > 1.15 and min(means) < 0.85


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_checkpoint_loading_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "deepcluster/1", "x": _Evil(marker)}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a deepcluster checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_without_a_newer_setting_resumes_as_its_default():
    from deepcluster.checkpoint import check_compatible
    from deepcluster.config import Config
    old = Config(k=7).to_dict()
    del old["kmeans_redo"]  # written before the option existed: it ran with the default
    check_compatible(old, Config(k=7), "old.pt")
    with pytest.raises(CheckpointError, match="kmeans_redo: checkpoint 1, now 3"):
        check_compatible(old, Config(k=7, kmeans_redo=3), "old.pt")


def test_checkpoint_before_dropout_flip_jitter_levels_head_pool2_resumes_as_it_ran():
    # Those settings came with defaults (no dropout, no flip, jitter, 3 levels, no FC head)
    # that differ from how runs behaved before them: an older checkpoint resumes only with the
    # behaviour it had.
    from deepcluster.checkpoint import check_compatible
    from deepcluster.config import Config
    old = Config(k=7).to_dict()
    del old["dropout"], old["flip"], old["jitter"], old["k_levels"], old["head"], old["pool2"]
    # pool2 (on) came with the behaviour before it: not part of the difference.
    with pytest.raises(CheckpointError, match="dropout: checkpoint 0.5, now 0.0") as error:
        check_compatible(old, Config(k=7), "old.pt")
    assert "flip: checkpoint True, now False" in str(error.value)
    assert "head: checkpoint 'fc', now 'none'" in str(error.value)
    assert "pool2" not in str(error.value)
    check_compatible(old, Config(k=7, dropout=0.5, flip=True, jitter=0.0, k_levels=1,
                                 head="fc"), "old.pt")
    # A ResNet never had an FC head: its older checkpoint resumes with head none.
    old_resnet = {**old, "arch": "resnet18"}
    check_compatible(old_resnet, Config(k=7, arch="resnet18", dropout=0.5, flip=True,
                                        jitter=0.0, k_levels=1), "old.pt")


def test_checkpoint_that_named_sobel_resumes_where_auto_makes_the_same_choice():
    # Written when Sobel was on by default: the config named sobel True. The automatic choice
    # is only known once the images are loaded; check_sobel compares it with the network's.
    from deepcluster.checkpoint import check_compatible, check_sobel
    from deepcluster.config import Config
    old = Config(k=7, sobel=True).to_dict()
    check_compatible(old, Config(k=7), "old.pt")
    with pytest.raises(CheckpointError, match="sobel: checkpoint True, now False"):
        check_compatible(old, Config(k=7, sobel=False), "old.pt")
    check_sobel({"sobel": True}, Config(k=7).sobel_for(grey=False), "old.pt")  # colour: on
    with pytest.raises(CheckpointError, match="ran with sobel True, the automatic --sobel "
                                              "chooses False for these images: resume with "
                                              "--sobel"):
        check_sobel({"sobel": True}, Config(k=7).sobel_for(grey=True), "old.pt")


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    import random
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's legacy state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_clustering_step_matches_an_independent_pca():
    import dc_kernels
    from deepcluster.clustering import cluster_features, derived_seed
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 12)) * 4
    truth = np.repeat([0, 1, 2], [40, 25, 35])
    x = centers[truth] + rng.normal(size=(100, 12))
    for power, nredo in ((-0.5, 1), (0.0, 3)):
        got, coarse = cluster_features(torch.tensor(x, dtype=torch.float32), [3, 2], pca_dim=4,
                                       niter=10, seed=7, pca_power=power, nredo=nredo,
                                       backend="torch")
        # Reference: float64 NumPy PCA (eigh of the population covariance), eigenvalue power,
        # row L2 normalisation, then the same k-means.
        centred = x - x.mean(0)
        values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
        top = np.argsort(values)[::-1][:4]
        y = centred @ vectors[:, top] * values[top] ** power
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        ref = dc_kernels.kmeans(torch.tensor(y, dtype=torch.float32), 3, niter=10, seed=7,
                                nredo=nredo, backend="torch")
        assert torch.equal(got.labels, ref.labels)
        assert got.objective == pytest.approx(float(ref.inertia), rel=1e-4)
        # A coarser level clusters the same vectors, from its own seed.
        ref2 = dc_kernels.kmeans(torch.tensor(y, dtype=torch.float32), 2, niter=10,
                                 seed=derived_seed(7, 1), nredo=nredo, backend="torch")
        assert coarse.seed == derived_seed(7, 1) and torch.equal(coarse.labels, ref2.labels)
        assert got.sizes.tolist() == np.bincount(ref.labels.numpy(), minlength=3).tolist()
        assert got.empty_clusters == 0 and got.seed == 7
    assert derived_seed(1, 2, 0) == derived_seed(1, 2, 0) != derived_seed(1, 3, 0)


def test_knn_monitor_against_a_float64_brute_force():
    from deepcluster.train import KNN_QUERIES, knn_monitor

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 600)
    labels[::17] = -1  # unknown labels are left out
    centres = rng.normal(size=(4, 16))
    features = torch.from_numpy(centres[labels.clip(0)] + 1.5 * rng.normal(size=(600, 16)))
    got = knn_monitor(features.float(), labels, seed=7)
    # The slice: the first min(KNN_QUERIES, n / 5) of the seeded permutation query the rest.
    order = np.random.default_rng(7).permutation(600)
    queries, bank = order[:min(KNN_QUERIES, 120)], order[120:]
    queries, bank = queries[labels[queries] >= 0], bank[labels[bank] >= 0]
    unit = features.numpy() / np.linalg.norm(features.numpy(), axis=1, keepdims=True)
    sims = unit[queries] @ unit[bank].T
    correct = 0
    for row, q in zip(sims, queries, strict=True):
        top = np.argsort(-row)[:20]
        votes = np.zeros(4)
        np.add.at(votes, labels[bank][top], np.exp(row[top] / 0.07))
        correct += votes.argmax() == labels[q]
    assert got == pytest.approx(100.0 * correct / len(queries))
    assert 40 < got < 100  # the data leave the monitor something to measure
    assert knn_monitor(features.float(), labels, seed=7) == got  # the same slice every epoch
    assert knn_monitor(features.float(), None, seed=7) is None
    assert knn_monitor(features.float(), np.full(600, -1), seed=7) is None


def test_cluster_levels_divide_k_by_four():
    from deepcluster.config import Config
    assert Config(k=100, k_levels=3).cluster_ks() == [100, 25, 6]
    assert Config(k=10000, k_levels=1).cluster_ks() == [10000]
    # Levels under 2 clusters are left out: k 10 keeps 10 and 2 (10 / 16 rounds to 1).
    assert Config(k=10, k_levels=3).cluster_ks() == [10, 2]


def test_level_loss_is_the_mean_of_each_levels_cross_entropy():
    from deepcluster.train import level_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7 + 3, generator=g, dtype=torch.float64)
    targets = torch.stack([torch.randint(0, 7, (6,), generator=g),
                           torch.randint(0, 3, (6,), generator=g)], dim=1)
    # Reference: -log softmax of each level's slice at its target, averaged over samples,
    # then over levels.
    def nll(z, y):
        z = z - z.max(dim=1, keepdim=True).values
        return float((z.exp().sum(1).log() - z[torch.arange(len(y)), y]).mean())
    expected = (nll(logits[:, :7], targets[:, 0]) + nll(logits[:, 7:], targets[:, 1])) / 2
    assert float(level_loss(logits, targets, [7, 3])) == pytest.approx(expected, rel=1e-12)
    assert float(level_loss(logits[:, :7], targets[:, :1], [7])) == \
        pytest.approx(nll(logits[:, :7], targets[:, 0]), rel=1e-12)
