"""deepcluster.eval: the tasks against independent references, extract, pictures, end to end."""

import json
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    normalized_mutual_info_score,
)

import dc_kernels
from deepcluster import eval as dc_eval
from deepcluster import eval_tasks, plots
from deepcluster.checkpoint import model_from_checkpoint, save_checkpoint
from deepcluster.config import Config
from deepcluster.data import ImageSet, eval_transform, normalize
from deepcluster.eval_features import EMBED, conv_layers, extract_features
from deepcluster.models import build_model
from tests.test_plots import png_size


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these problems are tiny, and threaded LAPACK (PCA's eigh) on a busy
    2-core machine can be 30x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _separable(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points labelled by argmax(x @ W), keeping only those with a margin: linearly separable."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, classes))
    x = rng.normal(size=(4 * n, d))
    scores = x @ w
    top2 = np.sort(scores, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 1.0
    x, y = x[keep][:n], scores[keep][:n].argmax(1)
    # A large offset and uneven scales, as raw conv activations have.
    x = x * rng.uniform(0.1, 50.0, size=d) + 100.0
    return torch.from_numpy(x).float(), torch.from_numpy(y).long()


def test_linear_probe_separable_reaches_100() -> None:
    x, y = _separable(1200, 20, 4, seed=0)
    probe = eval_tasks.linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], epochs=20,
                                    batch_size=100, seed=0)
    assert probe.accuracy == 100.0 and probe.predicted.shape == (200,)


def test_linear_probe_chance_on_noise_and_unknown_labels() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(600, 10))).float()
    y = torch.from_numpy(rng.integers(0, 4, 600)).long()
    y[::3] = -1  # unknown labels are left out, they must not become a class
    acc = eval_tasks.linear_probe(x[:400], y[:400], x[400:], y[400:], epochs=5).accuracy
    assert acc < 45.0  # 4 balanced classes of pure noise: about 25 %


def _knn_reference(train_x, train_y, test_x, test_y, k, temperature=0.07) -> float:
    """Loop-per-query weighted kNN in float64 NumPy."""
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    classes = np.unique(train_y)
    correct = 0
    for q, label in zip(te, test_y, strict=True):
        sims = tr @ q
        nearest = np.argsort(-sims)[:k]
        votes = {c: np.exp(sims[nearest][train_y[nearest] == c] / temperature).sum()
                 for c in classes}
        correct += int(max(votes, key=votes.get) == label)
    return 100.0 * correct / len(test_y)


def test_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(5, 16))
    train_y = rng.integers(0, 5, 500)
    test_y = rng.integers(0, 5, 120)
    train_x = centers[train_y] + 1.2 * rng.normal(size=(500, 16))
    test_x = centers[test_y] + 1.2 * rng.normal(size=(120, 16))
    # Sparse label values: 0..4 -> 3, 10, 17, ...
    train_y, test_y = train_y * 7 + 3, test_y * 7 + 3
    got = {k: p.accuracy for k, p in eval_tasks.knn_classify(
        torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
        torch.from_numpy(test_y), ks=(1, 20, 200, 1000), chunk=50).items()}
    for k in (1, 20, 200):
        assert got[k] == pytest.approx(_knn_reference(train_x, train_y, test_x, test_y, k))
    assert got[1000] == pytest.approx(_knn_reference(train_x, train_y, test_x, test_y, 500))
    assert 30.0 < got[20] < 100.0  # informative but not trivial: the test can tell k apart


def test_retrieval_map_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 8))
    db_y = rng.integers(0, 4, 300)
    q_y = rng.integers(0, 5, 40)  # label 4 has no relevant item: left out
    db_x = centers[db_y] + rng.normal(size=(300, 8))
    q_x = np.concatenate([centers, rng.normal(size=(1, 8))])[q_y] + rng.normal(size=(40, 8))
    db_y[:10] = -1  # unknown database labels are not part of the database
    got = eval_tasks.retrieval_map(torch.from_numpy(q_x), torch.from_numpy(q_y),
                                   torch.from_numpy(db_x), torch.from_numpy(db_y), chunk=7)
    known = db_y >= 0
    dbn = db_x[known] / np.linalg.norm(db_x[known], axis=1, keepdims=True)
    aps = []
    for q, label in zip(q_x, q_y, strict=True):
        relevant = db_y[known] == label
        if relevant.any():
            aps.append(average_precision_score(relevant, dbn @ (q / np.linalg.norm(q))))
    assert got == pytest.approx(100.0 * np.mean(aps), abs=1e-6)


def test_cluster_scores_agree_with_sklearn() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 900)
    x = rng.normal(size=(6, 32))[labels] * 3.0 + rng.normal(size=(900, 32))
    labels[:50] = -1
    result = eval_tasks.cluster(torch.from_numpy(x).float(), torch.from_numpy(labels), 6,
                                pca_dim=16, seed=1)
    assert result.whitened.shape == (900, 16)
    assert result.assignments.shape == (900,) and result.centroids.shape == (6, 16)
    known = labels >= 0
    pred = result.assignments.numpy()[known]
    assert result.nmi == pytest.approx(normalized_mutual_info_score(labels[known], pred),
                                       abs=1e-6)
    assert result.ari == pytest.approx(adjusted_rand_score(labels[known], pred), abs=1e-6)
    assert result.nmi > 0.9 and result.acc > 0.9 and result.purity >= result.acc


def test_cluster_keeps_the_lowest_objective_of_its_starts() -> None:
    # Overlapping blobs, many more than k: single starts end in different local minima.
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 40, 600)
    x = torch.from_numpy(rng.normal(size=(40, 8))[labels] + rng.normal(size=(600, 8))).float()
    y = torch.from_numpy(labels % 5)
    result = eval_tasks.cluster(x, y, 5, pca_dim=8, eigen_power=0.0, seed=3, nredo=4)
    # The starts are seeds 3..6 (dc_kernels.kmeans); score each alone on the same input.
    singles = [dc_kernels.kmeans(result.whitened, 5, 20, seed=s) for s in range(3, 7)]
    inertias = [float(r.inertia) for r in singles]
    assert len(set(inertias)) > 1  # else the test could not tell the starts apart
    best = singles[int(np.argmin(inertias))]
    assert torch.equal(result.assignments, best.labels)
    assert result.nmi == pytest.approx(normalized_mutual_info_score(
        y.numpy(), best.labels.numpy()), abs=1e-6)


# ---- features, extract, pictures, end to end --------------------------------------------------

def _tiny_model(arch: str = "alexnet", sobel: bool = True):
    torch.manual_seed(0)
    return build_model(arch, 8, sobel=sobel, in_channels=1, image_size=32, width=0.05)


def test_conv_layers_and_unpooled_features_match_a_manual_forward() -> None:
    model = _tiny_model().eval()
    assert [name for name, _ in conv_layers(model)] == [f"conv{i}" for i in range(1, 6)]
    rng = np.random.default_rng(5)
    images = ImageSet("rand", torch.from_numpy(rng.integers(0, 256, (7, 1, 20, 20),
                                                            dtype=np.uint8)), 1)
    feats = extract_features(model, images, image_size=32, in_channels=1,
                             layers=["conv1", "conv2", EMBED], device=torch.device("cpu"),
                             pool_dim=0, batch_size=3)
    x = normalize(torch.stack([eval_transform(32)(images.load(i)) for i in range(7)]))
    with torch.no_grad():
        # conv1 = Sobel, then the body's first conv-BN-ReLU; conv2 = up to the second ReLU.
        h1 = model.features[:3](model.sobel(x))
        h2 = model.features[:7](model.sobel(x))
        torch.testing.assert_close(feats["conv1"], h1.flatten(1))
        torch.testing.assert_close(feats["conv2"], h2.flatten(1))
        torch.testing.assert_close(feats[EMBED], model.embed(x))
    pooled = extract_features(model, images, image_size=32, in_channels=1, layers=["conv1"],
                              device=torch.device("cpu"), pool_dim=50)
    side = int(np.sqrt(50 // h1.shape[1]))
    expected = torch.nn.functional.adaptive_avg_pool2d(h1, side).flatten(1)
    torch.testing.assert_close(pooled["conv1"], expected)


def test_resnet_layers() -> None:
    model = build_model("resnet18", 4, sobel=False, in_channels=3, image_size=32)
    assert [name for name, _ in conv_layers(model)] == [f"conv{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """A checkpoint written exactly as deepcluster-train writes one, plus its metrics.jsonl."""
    run = tmp_path_factory.mktemp("run")
    spec = {"arch": "alexnet", "num_clusters": 8, "sobel": True, "in_channels": 1,
            "image_size": 32, "width": 0.05}
    config = Config(data="digits", k=8, width=0.05, pca_dim=32, epochs=2, out=str(run))
    model = _tiny_model()
    assignments = torch.from_numpy(np.random.default_rng(0).integers(0, 8, 1797))
    save_checkpoint({"config": config.to_dict(), "model_spec": spec, "model": model.state_dict(),
                     "epoch": 2, "assignments": assignments, "num_images": 1797},
                    run / "checkpoint.pt")
    records = [{"epoch": 0, "nmi_prev": None, "nmi_labels": 0.35},
               {"epoch": 1, "nmi_prev": 0.6, "nmi_labels": 0.41}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_end_to_end_cli(tiny_run, tmp_path, capsys) -> None:
    run = tiny_run
    out = tmp_path / "eval"
    status = dc_eval.main(["--checkpoint", str(run / "checkpoint.pt"), "--out", str(out),
                           "--baseline", "random", "--task", *dc_eval.TASKS,
                           "--max-train", "300", "--max-test", "100", "--probe-epochs", "2",
                           "--pool-dim", "256", "--kmeans-redo", "3"])
    assert status == 0
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    for row in ("k=10 NMI", "k=10 whitened NMI", "k=8 whitened purity", "conv1", "conv5",
                "k=20 top-1 %", "k=200 top-1 %", "mAP %"):
        assert row in table and row in printed
    assert "| task | metric | learned | random | learned - random | s.e. |" in table
    rows = {(r["task"], r["metric"]): r for r in
            json.loads((out / "results.json").read_text())}
    # Beside every number, the random baseline and the difference; beside the NMI and top-1
    # differences, their standard error from which samples were scored (a paired bootstrap,
    # tested in test_metrics), and none for the scores it is not drawn for.
    assert all(r["difference"] == pytest.approx(r["learned"] - r["random"])
               for r in rows.values())
    for (task, metric), r in rows.items():
        if metric.endswith(("NMI", "top-1 %")):
            assert r["difference_se"] > 0.0, (task, metric)
        else:
            assert r["difference_se"] is None, (task, metric)
    # Cluster, kNN and linear score the embedding and every conv layer; the "best conv" rows
    # repeat, per model, the conv layer whose probe scores highest in the cross-validation.
    convs = [f"conv{i}" for i in range(1, 6)]
    for layer in ["embed", *convs]:
        assert ("cluster", f"{layer} k=10 NMI") in rows and ("knn", f"{layer} k=20 top-1 %") in rows
        assert any(task == "linear" and metric.startswith(f"{layer} (") for task, metric in rows)
    for model in ("learned", "random"):
        probes = {metric.split()[0]: r[model] for (task, metric), r in rows.items()
                  if task == "linear" and metric.startswith("conv")}
        cross_validated = {layer: float(acc) for layer, acc in re.findall(
            rf"\[{model}\] linear (conv\d): [\d.]+ % \(cross-validated on train: ([\d.]+) %\)",
            printed)}
        assert sorted(cross_validated) == convs
        best = max(cross_validated, key=cross_validated.__getitem__)
        assert (f"{model}: the best conv layer (highest linear probe in 5-fold cross-validation "
                f"on the train split) is {best}") in table
        for task, metric in (("knn", "k=20 top-1 %"), ("cluster", "k=10 NMI")):
            at_best = rows[(task, f"{best} {metric}")][model]
            assert rows[(task, f"best conv {metric}")][model] == at_best
        assert rows[("linear", "best conv top-1 %")][model] == probes[best]
    # ARI may dip below 0 (worse than chance); every other number is a fraction or a percent.
    assert all(-1.0 <= r[m] <= 100.0 for r in rows.values() for m in ("learned", "random"))
    assert all(0.0 <= r[m] <= 1.0 for (task, metric), r in rows.items()
               if task == "cluster" and "ARI" not in metric for m in ("learned", "random"))

    # Every written file is listed at the end of the output, and the pictures are valid PNGs.
    listed = printed.split("files written:")[1].split()
    expected = {"conv1_filters_learned.png": plots.FIGSIZE_FILTERS,
                "conv1_filters_random.png": plots.FIGSIZE_FILTERS,
                "nmi_curves.png": plots.FIGSIZE_NMI,
                "cluster_sizes.png": plots.FIGSIZE_SIZES,
                "top_cluster_images.png": plots.top_images_figsize(dc_eval.PICTURE_ROWS),
                "top_filter_images.png": plots.top_images_figsize(dc_eval.PICTURE_ROWS)}
    for name, figsize in expected.items():
        assert str(out / name) in listed
        assert png_size(out / name) == plots.figure_pixels(figsize)

    # extract round-trips: the .npz holds exactly the features and labels of the split.
    splits = dc_eval.load_splits("digits", seed=0, max_train=300, max_test=100)
    model, _ = model_from_checkpoint(run / "checkpoint.pt")
    for split, images in (("train", splits.train), ("test", splits.test)):
        path = out / f"features_learned_embed_{split}.npz"
        assert str(path) in listed
        with np.load(path) as saved:
            assert saved["features"].dtype == np.float32
            np.testing.assert_array_equal(saved["labels"], images.labels)
            direct = extract_features(model, images, image_size=32, in_channels=1,
                                      layers=["embed"], device=torch.device("cpu"))["embed"]
            np.testing.assert_allclose(saved["features"], direct.numpy(), rtol=1e-5, atol=1e-6)
            if split == "train":
                train_embed = torch.from_numpy(saved["features"])
    # Into the 10 classes the embedding is clustered after plain PCA, and also as the run
    # clusters (its eigenvalue power, -0.5: "whitened"), which alone is run at the run's k.
    labels = torch.from_numpy(splits.train.labels)
    for metric, k, power in (("k=10 NMI", 10, 0.0), ("k=10 whitened NMI", 10, -0.5),
                             ("k=8 whitened NMI", 8, -0.5)):
        expected = eval_tasks.cluster(train_embed, labels, k, pca_dim=32, eigen_power=power,
                                      nredo=3).nmi
        assert rows[("cluster", f"embed {metric}")]["learned"] == pytest.approx(expected)
    assert ("cluster", "embed k=8 NMI") not in rows
    assert not any("whitened" in metric for _, metric in rows if not metric.startswith("embed"))


def test_splits_are_disjoint_and_fixed_by_the_seed() -> None:
    a = dc_eval.load_splits("digits", seed=3)
    b = dc_eval.load_splits("digits", seed=3)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == round(0.2 * 1797)
    assert torch.equal(a.test.images, b.test.images)
    # Together the two splits are the whole set, each image once.
    full = dc_eval.load_images("digits")
    rows = sorted(bytes(x.numpy()) for x in torch.cat([a.train.images, a.test.images]))
    assert rows == sorted(bytes(x.numpy()) for x in full.images)
    c = dc_eval.load_splits("digits", seed=4)
    assert not torch.equal(a.test.images, c.test.images)


def test_bad_requests(tiny_run, tmp_path, capsys) -> None:
    run = tiny_run
    with pytest.raises(dc_eval.EvalError, match="layer"):
        dc_eval.evaluate(run / "checkpoint.pt", tasks=["extract"], layer="fc9", out=tmp_path)
    with pytest.raises(dc_eval.EvalError, match="baseline"):
        dc_eval.evaluate(run / "checkpoint.pt", tasks=["knn"], baseline="imagenet", out=tmp_path)
    assert dc_eval.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    alone = dc_eval.evaluate(run / "checkpoint.pt", tasks=["knn"], baseline="none",
                             out=tmp_path / "alone", max_train=100, max_test=50)
    assert alone.models == ["learned"] and "difference" not in alone.to_json()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_end_to_end_on_cuda_agrees_with_cpu(tiny_run, tmp_path) -> None:
    kwargs = {"tasks": ["cluster", "linear", "knn", "retrieval"], "max_train": 300,
              "max_test": 100, "probe_epochs": 2, "pool_dim": 256}
    cpu = dc_eval.evaluate(tiny_run / "checkpoint.pt", device="cpu", out=tmp_path / "cpu",
                           **kwargs)
    gpu = dc_eval.evaluate(tiny_run / "checkpoint.pt", device="cuda", out=tmp_path / "gpu",
                           **kwargs)
    assert gpu.rows.keys() == cpu.rows.keys()
    keys = [key for key in cpu.rows if key[0] == "knn" and "k=20 " in key[1]]
    assert len(keys) == 7  # conv1..conv5, the embedding and the best conv layer
    for key in [*keys, ("retrieval", "mAP %")]:
        # Same features up to float rounding (cuDNN and CPU convolutions round differently, so
        # near-ties may swap): at most one of the 100 test images changes its kNN vote.
        assert gpu.rows[key]["learned"] == pytest.approx(cpu.rows[key]["learned"], abs=1.0)


def test_best_conv_is_chosen_by_cross_validation_and_the_shallower_on_a_tie() -> None:
    best = dc_eval._BestConv()
    # conv1 has the highest test probe but not the highest cross-validated one: the test split
    # does not choose. conv2 and conv3 tie at 85 (the shallower is chosen); conv3's per-fold
    # differences from conv2 spread wide, conv4's are steadily below.
    sizes = [3, 3, 2, 2, 2]
    scores = (("conv1", 90.0, [80.0, 80.0, 80.0, 80.0, 80.0], 0.5),
              ("conv2", 85.0, [86.0, 84.0, 85.0, 85.0, 85.0], 0.6),
              ("conv3", 86.0, [85.0, 85.0, 85.0, 84.0, 86.0], 0.7),
              ("conv4", 80.0, [84.0, 83.0, 84.0, 84.0, 84.0], 0.8),
              ("embed", 99.0, None, 0.9))  # the embedding is never a conv layer
    for layer, probe, folds, nmi in scores:
        best.add(layer, "linear", "top-1 %", probe)
        best.add(layer, "cluster", "k=10 NMI", nmi)
        if folds is not None:
            assert best.select(layer, folds, sizes) == pytest.approx(np.average(folds,
                                                                                weights=sizes))
    report = dc_eval.EvalReport(models=["learned"])
    best.report(report, "learned")
    gaps = np.array(scores[1][2]) - np.array(scores[2][2])
    error = gaps.std(ddof=1) / np.sqrt(len(gaps))
    assert report.notes == ["learned: the best conv layer (highest linear probe in 5-fold "
                            "cross-validation on the train split) is conv2; within one standard "
                            "error of it (paired over the folds): "
                            f"conv3 (+0.00 ± {error:.2f} points)"]
    assert report.rows[("cluster", "best conv k=10 NMI")] == {"learned": 0.6}
    assert report.rows[("linear", "best conv top-1 %")] == {"learned": 85.0}
    alone = dc_eval._BestConv()
    for layer, _, folds, _ in scores[:2]:
        alone.select(layer, folds, sizes)
    alone.report(report, "random")
    assert report.notes[-1].endswith("is conv2; within one standard error of it (paired over "
                                     "the folds): no other layer")


def test_cv_folds_hold_out_every_labelled_train_sample_once() -> None:
    labels = torch.tensor([0, 1, -1, 2, 0, 1, 2, -1, 0, 1, 2, 0])  # 10 labelled
    folds = dc_eval._cv_folds(labels, seed=5)
    assert len(folds) == 5 and all(len(held) == 2 and len(fit) == 8 for fit, held in folds)
    labelled = [i for i in range(12) if labels[i] >= 0]
    assert sorted(i for _, held in folds for i in held.tolist()) == labelled
    for fit, held in folds:
        assert sorted([*fit.tolist(), *held.tolist()]) == labelled
    again = dc_eval._cv_folds(labels, seed=5)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert not torch.equal(dc_eval._cv_folds(labels, seed=6)[0][1], folds[0][1])
    # Four labelled samples cannot fill five folds.
    assert dc_eval._cv_folds(torch.tensor([0, -1, 1, 0, 1]), seed=0) is None
