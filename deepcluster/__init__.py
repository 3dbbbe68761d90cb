"""deepcluster: train convnets with DeepCluster (Caron et al., ECCV 2018) on dc_kernels.

Command: ``deepcluster-train`` (``deepcluster.train:main``). Building blocks for other tools:
``models.build_model`` (the networks), ``checkpoint.load_checkpoint`` /
``checkpoint.model_from_checkpoint`` (a trained feature extractor, ``model.embed``), and
``data.load_images`` / ``data.eval_transform`` + ``data.normalize`` (its data and input
pipeline).
"""
