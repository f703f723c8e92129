"""The tiny training configuration shared by the training, evaluation and visualisation tests."""

# A run of a few seconds: 8 two-class synthetic videos, 32x32 views of 8 frames, K=2, width 1/16.
TINY = [
    "dataset=synthetic",
    "model.width=0.0625",
    "synthetic.num_classes=2",
    "synthetic.train_per_class=4",
    "synthetic.test_per_class=2",
    "synthetic.num_frames=16",
    "synthetic.size=32",
    "augment.size=32",
    "augment.num_clips=2",
    "augment.levels_per_step=3",
    "batch_size=4",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "mi.hidden=8",
    "td.hidden=8",
    "num_workers=0",
    "eval.linear=false",
    "eval.knn_every=0",
    "log.progress=false",
    "log.plot=false",
    "log.tensorboard=false",
    "log.every=1",
    "optim.lr_milestones=[]",
]
